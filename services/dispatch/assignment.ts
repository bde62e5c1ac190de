// Min-cost bipartite assignment (rows = orders, columns = drivers): shortest augmenting paths with
// potentials (Hungarian method / Jonker-Volgenant). Each row is added by one Dijkstra search over
// reduced costs that stops at the first free column it settles; potentials keep reduced costs
// non-negative so Dijkstra stays valid after every augmentation.

/** Min-cost assignment of every row to a distinct column; rows <= cols. Dense cost, row-major (rows*cols). */
export function solveAssignment(cost: Float64Array, rows: number, cols: number): { rowToCol: Int32Array; total: number } {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0) {
    throw new RangeError(`rows and cols must be non-negative integers, got ${rows} x ${cols}`);
  }
  if (rows > cols) throw new RangeError(`solveAssignment needs rows <= cols, got ${rows} x ${cols}`);
  if (cost.length < rows * cols) throw new RangeError(`cost has ${cost.length} entries, ${rows * cols} needed`);
  for (let k = 0; k < rows * cols; k++) {
    if (!Number.isFinite(cost[k])) throw new RangeError(`cost[${k}] is not finite (${cost[k]})`);
  }

  // 1-based with column 0 as the virtual start column that holds the row being added.
  const u = new Float64Array(rows + 1);
  const v = new Float64Array(cols + 1);
  const colRow = new Int32Array(cols + 1); // row (1-based) holding column j, 0 = free
  const way = new Int32Array(cols + 1); // previous column on the shortest path
  const minv = new Float64Array(cols + 1);
  const used = new Uint8Array(cols + 1);

  for (let i = 1; i <= rows; i++) {
    colRow[0] = i;
    let j0 = 0;
    minv.fill(Infinity);
    used.fill(0);
    do {
      used[j0] = 1;
      const i0 = colRow[j0];
      const base = (i0 - 1) * cols - 1;
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= cols; j++) {
        if (used[j]) continue;
        const cur = cost[base + j] - u[i0] - v[j];
        if (cur < minv[j]) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j] < delta) {
          delta = minv[j];
          j1 = j;
        }
      }
      for (let j = 0; j <= cols; j++) {
        if (used[j]) {
          u[colRow[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (colRow[j0] !== 0);
    do {
      const j1 = way[j0];
      colRow[j0] = colRow[j1];
      j0 = j1;
    } while (j0 !== 0);
  }

  const rowToCol = new Int32Array(rows).fill(-1);
  for (let j = 1; j <= cols; j++) if (colRow[j] !== 0) rowToCol[colRow[j] - 1] = j - 1;
  let total = 0;
  for (let i = 0; i < rows; i++) total += cost[i * cols + rowToCol[i]];
  return { rowToCol, total };
}

/**
 * Sparse min-cost assignment: row r may only take the columns in rows[r].cols (costs parallel).
 * Returns rowToCol (-1 for a row that could not be matched when no perfect matching exists —
 * then maximise matched rows first, min cost second) and the total of matched costs.
 *
 * Every row also gets a private "unmatched" column whose cost exceeds what any set of real edges
 * can differ by, so a perfect matching always exists and its optimum is the lexicographic one
 * asked for: most rows matched, then least cost. (Skipping a row that finds no free column would
 * not do: a later row may be the cheaper one to leave out.)
 */
export function solveSparseAssignment(
  rows: { cols: Int32Array; costs: Float64Array }[],
  nCols: number,
): { rowToCol: Int32Array; total: number; matched: number } {
  if (!Number.isInteger(nCols) || nCols < 0) throw new RangeError(`nCols must be a non-negative integer, got ${nCols}`);
  const nRows = rows.length;
  let minC = Infinity;
  let maxC = -Infinity;
  for (let r = 0; r < nRows; r++) {
    const { cols, costs } = rows[r];
    if (cols.length !== costs.length) throw new RangeError(`rows[${r}]: ${cols.length} cols but ${costs.length} costs`);
    for (let k = 0; k < cols.length; k++) {
      const j = cols[k];
      const c = costs[k];
      if (!(j >= 0 && j < nCols)) throw new RangeError(`rows[${r}].cols[${k}] = ${j} is outside 0..${nCols - 1}`);
      if (!Number.isFinite(c)) throw new RangeError(`rows[${r}].costs[${k}] is not finite (${c})`);
      if (c < minC) minC = c;
      if (c > maxC) maxC = c;
    }
  }
  if (minC === Infinity) minC = maxC = 0;
  // Costs are shifted to [0, span]; leaving one more row out must cost more than any re-choice of
  // real edges can save, which is below nRows * span.
  const span = maxC - minC;
  const unmatchedCost = (nRows + 1) * (span + 1);

  const nAll = nCols + nRows; // column nCols + r is row r's "unmatched" column
  const u = new Float64Array(nRows);
  const v = new Float64Array(nAll);
  const rowCol = new Int32Array(nRows).fill(-1);
  const colRow = new Int32Array(nAll).fill(-1);
  const dist = new Float64Array(nAll).fill(Infinity);
  const prevRow = new Int32Array(nAll);
  const settled = new Uint8Array(nAll);
  const touched = new Int32Array(nAll);
  const settledList = new Int32Array(nAll);

  // Reduced costs c - u[r] - v[j] start non-negative with u[r] = the row's cheapest option.
  for (let r = 0; r < nRows; r++) {
    let m = unmatchedCost;
    const costs = rows[r].costs;
    for (let k = 0; k < costs.length; k++) if (costs[k] - minC < m) m = costs[k] - minC;
    u[r] = m;
  }

  // Binary min-heap of (dist, column) with lazy deletion: a stale entry is skipped when popped.
  let heapKey = new Float64Array(1024);
  let heapVal = new Int32Array(1024);
  let heapSize = 0;
  const push = (key: number, val: number) => {
    if (heapSize === heapKey.length) {
      const k2 = new Float64Array(heapKey.length * 2);
      k2.set(heapKey);
      heapKey = k2;
      const v2 = new Int32Array(heapVal.length * 2);
      v2.set(heapVal);
      heapVal = v2;
    }
    let i = heapSize++;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (heapKey[p] <= key) break;
      heapKey[i] = heapKey[p];
      heapVal[i] = heapVal[p];
      i = p;
    }
    heapKey[i] = key;
    heapVal[i] = val;
  };
  const pop = (): number => {
    const top = heapVal[0];
    const key = heapKey[--heapSize];
    const val = heapVal[heapSize];
    let i = 0;
    for (;;) {
      let c = 2 * i + 1;
      if (c >= heapSize) break;
      if (c + 1 < heapSize && heapKey[c + 1] < heapKey[c]) c++;
      if (heapKey[c] >= key) break;
      heapKey[i] = heapKey[c];
      heapVal[i] = heapVal[c];
      i = c;
    }
    heapKey[i] = key;
    heapVal[i] = val;
    return top;
  };

  for (let s = 0; s < nRows; s++) {
    let nTouched = 0;
    let nSettled = 0;
    heapSize = 0;
    const relaxRow = (r: number, base: number) => {
      const { cols, costs } = rows[r];
      const ur = u[r];
      for (let k = 0; k < cols.length; k++) {
        const j = cols[k];
        if (settled[j]) continue;
        const nd = base + (costs[k] - minC) - ur - v[j];
        if (nd < dist[j]) {
          if (dist[j] === Infinity) touched[nTouched++] = j;
          dist[j] = nd;
          prevRow[j] = r;
          push(nd, j);
        }
      }
      const d = nCols + r;
      if (!settled[d]) {
        const nd = base + unmatchedCost - ur - v[d];
        if (nd < dist[d]) {
          if (dist[d] === Infinity) touched[nTouched++] = d;
          dist[d] = nd;
          prevRow[d] = r;
          push(nd, d);
        }
      }
    };

    relaxRow(s, 0);
    let end = -1;
    // Always ends: the source's own unmatched column is free and was relaxed.
    while (heapSize > 0) {
      const dj = heapKey[0];
      const j = pop();
      if (settled[j] || dj > dist[j]) continue;
      settled[j] = 1;
      settledList[nSettled++] = j;
      if (colRow[j] === -1) {
        end = j;
        break;
      }
      relaxRow(colRow[j], dj);
    }
    const total = dist[end];

    // Potentials: every settled node moves by (total - its distance), which keeps all reduced
    // costs non-negative and makes the path just found tight (zero reduced cost).
    u[s] += total;
    for (let k = 0; k < nSettled; k++) {
      const j = settledList[k];
      const delta = total - dist[j];
      v[j] -= delta;
      const r = colRow[j];
      if (r !== -1) u[r] += delta;
    }

    for (let j = end; ; ) {
      const r = prevRow[j];
      const nextJ = rowCol[r];
      rowCol[r] = j;
      colRow[j] = r;
      if (r === s) break;
      j = nextJ;
    }

    for (let k = 0; k < nTouched; k++) {
      const j = touched[k];
      dist[j] = Infinity;
      settled[j] = 0;
    }
  }

  const rowToCol = new Int32Array(nRows).fill(-1);
  let total = 0;
  let matched = 0;
  for (let r = 0; r < nRows; r++) {
    const j = rowCol[r];
    if (j >= nCols) continue;
    rowToCol[r] = j;
    matched++;
    // A column listed twice in one row counts at its cheaper cost, as the search used it.
    const { cols, costs } = rows[r];
    let c = Infinity;
    for (let k = 0; k < cols.length; k++) if (cols[k] === j && costs[k] < c) c = costs[k];
    total += c;
  }
  return { rowToCol, total, matched };
}
