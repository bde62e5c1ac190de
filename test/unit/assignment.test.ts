import assert from "node:assert/strict";
import { mulberry32 } from "../../services/catalog/seed.js";
import fc from "fast-check";
import { solveAssignment, solveSparseAssignment } from "../../services/dispatch/assignment.js";

type SparseRow = { cols: Int32Array; costs: Float64Array };

/** Every injective row -> column map, best total. */
function bruteDense(cost: number[][], cols: number): number {
  const rows = cost.length;
  const used = new Array<boolean>(cols).fill(false);
  let best = Infinity;
  const go = (r: number, acc: number) => {
    if (r === rows) {
      best = Math.min(best, acc);
      return;
    }
    for (let j = 0; j < cols; j++) {
      if (used[j]) continue;
      used[j] = true;
      go(r + 1, acc + cost[r][j]);
      used[j] = false;
    }
  };
  go(0, 0);
  return best;
}

/** Every partial injective map using only allowed edges: most rows matched, then least cost. */
function bruteSparse(rows: { col: number; cost: number }[][], nCols: number): { matched: number; total: number } {
  const used = new Array<boolean>(nCols).fill(false);
  let best = { matched: -1, total: Infinity };
  const go = (r: number, matched: number, acc: number) => {
    if (r === rows.length) {
      if (matched > best.matched || (matched === best.matched && acc < best.total)) best = { matched, total: acc };
      return;
    }
    go(r + 1, matched, acc);
    for (const e of rows[r]) {
      if (used[e.col]) continue;
      used[e.col] = true;
      go(r + 1, matched + 1, acc + e.cost);
      used[e.col] = false;
    }
  };
  go(0, 0, 0);
  return best;
}

function toSparse(rows: { col: number; cost: number }[][]): SparseRow[] {
  return rows.map((es) => ({ cols: Int32Array.from(es.map((e) => e.col)), costs: Float64Array.from(es.map((e) => e.cost)) }));
}

/** The answer is a real assignment: distinct columns, allowed edges, and the total it claims. */
function checkSparseAnswer(rows: SparseRow[], nCols: number, ans: { rowToCol: Int32Array; total: number; matched: number }) {
  const seen = new Set<number>();
  let total = 0;
  let matched = 0;
  ans.rowToCol.forEach((j, r) => {
    if (j === -1) return;
    assert.ok(j >= 0 && j < nCols, `row ${r} got column ${j}`);
    assert.ok(!seen.has(j), `column ${j} given twice`);
    seen.add(j);
    let c = Infinity;
    rows[r].cols.forEach((cj, k) => {
      if (cj === j) c = Math.min(c, rows[r].costs[k]);
    });
    assert.ok(c < Infinity, `row ${r} got column ${j} it does not list`);
    total += c;
    matched++;
  });
  assert.equal(ans.matched, matched);
  assert.ok(Math.abs(ans.total - total) < 1e-6 * Math.max(1, Math.abs(total)), `claimed ${ans.total}, edges sum to ${total}`);
}


/** k nearest points by brute force over a 1 km grid's rings (only a test fixture; fast enough for 6,000 queries). */
function nearestIndex(points: { x: number; y: number }[], side: number) {
  const cell = 1;
  const n = Math.ceil(side / cell);
  const grid: number[][] = Array.from({ length: n * n }, () => []);
  const at = (v: number) => Math.min(n - 1, Math.max(0, Math.floor(v / cell)));
  points.forEach((p, j) => grid[at(p.y) * n + at(p.x)].push(j));
  return (q: { x: number; y: number }, k: number): { j: number; d: number }[] => {
    const cx = at(q.x);
    const cy = at(q.y);
    const found: { j: number; d: number }[] = [];
    for (let ring = 0; ring <= n; ring++) {
      for (let gy = cy - ring; gy <= cy + ring; gy++) {
        for (let gx = cx - ring; gx <= cx + ring; gx++) {
          if (Math.max(Math.abs(gx - cx), Math.abs(gy - cy)) !== ring || gx < 0 || gy < 0 || gx >= n || gy >= n) continue;
          for (const j of grid[gy * n + gx]) found.push({ j, d: Math.hypot(points[j].x - q.x, points[j].y - q.y) });
        }
      }
      // Everything within ring * cell of the query has been seen once the rings reach that far.
      found.sort((a, b) => a.d - b.d);
      if (found.length >= k && found[k - 1].d <= ring * cell) return found.slice(0, k);
    }
    return found.slice(0, k);
  };
}

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-7 * Math.max(1, Math.abs(a), Math.abs(b));

describe("dispatch assignment: solveAssignment (dense)", () => {
  it("finds the brute-force optimum on small random instances", () => {
    const instance = fc
      .record({ rows: fc.integer({ min: 0, max: 6 }), extra: fc.integer({ min: 0, max: 3 }) })
      .filter(({ rows, extra }) => rows + extra <= 7)
      .chain(({ rows, extra }) =>
        fc.array(fc.array(fc.oneof(fc.integer({ min: -20, max: 100 }), fc.double({ min: -50, max: 1e4, noNaN: true })), { minLength: rows + extra, maxLength: rows + extra }), {
          minLength: rows,
          maxLength: rows,
        }).map((m) => ({ m, cols: rows + extra })),
      );
    fc.assert(
      fc.property(instance, ({ m, cols }) => {
        const rows = m.length;
        const { rowToCol, total } = solveAssignment(Float64Array.from(m.flat()), rows, cols);
        assert.equal(new Set(rowToCol).size, rows, "columns are distinct");
        let sum = 0;
        rowToCol.forEach((j, i) => {
          assert.ok(j >= 0 && j < cols);
          sum += m[i][j];
        });
        assert.ok(close(sum, total), `total ${total} vs edges ${sum}`);
        assert.ok(close(total, bruteDense(m, cols)), `total ${total} vs brute force ${bruteDense(m, cols)}`);
      }),
      { numRuns: 400 },
    );
  });

  it("prefers the globally cheaper pairing over the greedy one", () => {
    // Greedy gives row 0 column 0 (1) and row 1 column 1 (100): 101. Optimal is 2 + 3 = 5.
    const { rowToCol, total } = solveAssignment(Float64Array.from([1, 2, 3, 100]), 2, 2);
    assert.deepEqual([...rowToCol], [1, 0]);
    assert.equal(total, 5);
  });

  it("rejects more rows than columns and non-finite costs", () => {
    assert.throws(() => solveAssignment(new Float64Array(6), 3, 2), RangeError);
    assert.throws(() => solveAssignment(Float64Array.from([1, Infinity]), 1, 2), RangeError);
    assert.throws(() => solveAssignment(Float64Array.from([1, NaN]), 1, 2), RangeError);
    assert.deepEqual(solveAssignment(new Float64Array(0), 0, 3), { rowToCol: new Int32Array(0), total: 0 });
  });
});

describe("dispatch assignment: solveSparseAssignment", () => {
  const edges = (nCols: number) =>
    fc.uniqueArray(fc.record({ col: fc.integer({ min: 0, max: nCols - 1 }), cost: fc.oneof(fc.integer({ min: -10, max: 60 }), fc.double({ min: 0, max: 100, noNaN: true })) }), {
      selector: (e) => e.col,
      maxLength: nCols,
    });
  const instance = fc.integer({ min: 1, max: 7 }).chain((nCols) =>
    fc.array(edges(nCols), { minLength: 0, maxLength: 6 }).map((rows) => ({ rows, nCols })),
  );

  it("matches as many rows as possible, then at least cost (brute force, small instances)", () => {
    fc.assert(
      fc.property(instance, ({ rows, nCols }) => {
        const sparse = toSparse(rows);
        const ans = solveSparseAssignment(sparse, nCols);
        checkSparseAnswer(sparse, nCols, ans);
        const best = bruteSparse(rows, nCols);
        assert.equal(ans.matched, best.matched, "matched rows");
        assert.ok(close(ans.total, best.total), `total ${ans.total} vs brute force ${best.total}`);
      }),
      { numRuns: 600 },
    );
  });

  it("agrees with the dense solver when every row lists every column", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }).chain((rows) =>
          fc.integer({ min: rows, max: 7 }).chain((cols) =>
            fc.array(fc.array(fc.integer({ min: 0, max: 50 }), { minLength: cols, maxLength: cols }), { minLength: rows, maxLength: rows }).map((m) => ({ m, cols })),
          ),
        ),
        ({ m, cols }) => {
          const all = Int32Array.from({ length: cols }, (_, j) => j);
          const sparse = m.map((row) => ({ cols: all, costs: Float64Array.from(row) }));
          const s = solveSparseAssignment(sparse, cols);
          const d = solveAssignment(Float64Array.from(m.flat()), m.length, cols);
          assert.equal(s.matched, m.length);
          assert.ok(close(s.total, d.total), `sparse ${s.total} vs dense ${d.total}`);
          assert.ok(close(d.total, bruteDense(m, cols)));
        },
      ),
      { numRuns: 200 },
    );
  });

  it("leaves out the row that is cheaper to leave out, not the one that came last", () => {
    // Both rows want only column 0; row 1 is far cheaper there. Skipping whichever row finds the
    // column taken would keep row 0 at cost 10.
    const rows = toSparse([[{ col: 0, cost: 10 }], [{ col: 0, cost: 1 }]]);
    const ans = solveSparseAssignment(rows, 1);
    assert.deepEqual([...ans.rowToCol], [-1, 0]);
    assert.equal(ans.matched, 1);
    assert.equal(ans.total, 1);
  });

  it("matches more rows even when that costs more", () => {
    // Row 0 alone would take column 0 (cost 0); matching both forces row 0 to column 1 (cost 1000).
    const rows = toSparse([
      [
        { col: 0, cost: 0 },
        { col: 1, cost: 1000 },
      ],
      [{ col: 0, cost: 0 }],
    ]);
    const ans = solveSparseAssignment(rows, 2);
    assert.deepEqual([...ans.rowToCol], [1, 0]);
    assert.equal(ans.total, 1000);
  });

  it("handles rows with no candidates and duplicate column entries", () => {
    const rows = toSparse([
      [],
      [
        { col: 2, cost: 9 },
        { col: 2, cost: 4 },
      ],
    ]);
    const ans = solveSparseAssignment(rows, 3);
    assert.deepEqual([...ans.rowToCol], [-1, 2]);
    assert.equal(ans.total, 4);
    assert.equal(ans.matched, 1);
    assert.throws(() => solveSparseAssignment(toSparse([[{ col: 3, cost: 1 }]]), 3), RangeError);
    assert.throws(() => solveSparseAssignment([{ cols: Int32Array.from([0]), costs: Float64Array.from([NaN]) }], 1), RangeError);
  });

  it("agrees with the dense solver on medium instances with k candidate columns per row", () => {
    const rand = mulberry32(7);
    for (let trial = 0; trial < 20; trial++) {
      const nRows = 40 + Math.floor(rand() * 40);
      const nCols = nRows + Math.floor(rand() * 40);
      const k = 3 + Math.floor(rand() * 10);
      // A hidden permutation guarantees a perfect matching inside the allowed edges.
      const perm = Array.from({ length: nCols }, (_, j) => j);
      for (let j = nCols - 1; j > 0; j--) {
        const t = Math.floor(rand() * (j + 1));
        [perm[j], perm[t]] = [perm[t], perm[j]];
      }
      const notAllowed = 1e6; // above nRows * max cost, so the dense optimum never uses it
      const dense = new Float64Array(nRows * nCols).fill(notAllowed);
      const sparse: SparseRow[] = [];
      for (let r = 0; r < nRows; r++) {
        const cols = new Set<number>([perm[r]]);
        while (cols.size < k) cols.add(Math.floor(rand() * nCols));
        const cs = [...cols];
        const costs = cs.map(() => Math.round(rand() * 1000) / 10);
        cs.forEach((j, t) => (dense[r * nCols + j] = costs[t]));
        sparse.push({ cols: Int32Array.from(cs), costs: Float64Array.from(costs) });
      }
      const s = solveSparseAssignment(sparse, nCols);
      const d = solveAssignment(dense, nRows, nCols);
      checkSparseAnswer(sparse, nCols, s);
      assert.equal(s.matched, nRows);
      assert.ok(d.total < notAllowed, "dense stayed on allowed edges");
      assert.ok(close(s.total, d.total), `trial ${trial}: sparse ${s.total} vs dense ${d.total}`);
    }
  });

  for (const layout of ["uniform", "hotspots"] as const) {
    it(`solves 6,000 orders x 10,000 drivers, 64 nearest each, ${layout} orders (timing printed)`, function () {
      this.timeout(120_000);
      const rand = mulberry32(layout === "uniform" ? 42 : 43);
      const nRows = 6000;
      const nCols = 10_000;
      const k = 64;
      // Drivers spread over a 30 km square; candidates are each order's 64 nearest drivers, as
      // GEOSEARCH COUNT would give. "hotspots" puts the orders in 8 small clusters (a dinner rush in
      // a few food streets), so thousands of orders contend for a few hundred drivers and many
      // cannot be matched at all: the solver's worst case.
      const side = 30;
      const drivers = Array.from({ length: nCols }, () => ({ x: rand() * side, y: rand() * side }));
      const spots = Array.from({ length: 8 }, () => ({ x: rand() * side, y: rand() * side }));
      const orders = Array.from({ length: nRows }, () => {
        if (layout === "uniform") return { x: rand() * side, y: rand() * side };
        const c = spots[Math.floor(rand() * spots.length)];
        return { x: c.x + (rand() - 0.5), y: c.y + (rand() - 0.5) };
      });
      const near = nearestIndex(drivers, side);
      const rows: SparseRow[] = orders.map((o) => {
        const nearest = near(o, k);
        return { cols: Int32Array.from(nearest.map((n) => n.j)), costs: Float64Array.from(nearest.map((n) => n.d)) };
      });
      // Nearest-free-driver greedy, order by order: what the optimum must not be worse than.
      let greedyTotal = 0;
      let greedyMatched = 0;
      const taken = new Uint8Array(nCols);
      for (const row of rows) {
        for (let t = 0; t < row.cols.length; t++) {
          if (taken[row.cols[t]]) continue;
          taken[row.cols[t]] = 1;
          greedyTotal += row.costs[t];
          greedyMatched++;
          break;
        }
      }
      const t0 = performance.now();
      const ans = solveSparseAssignment(rows, nCols);
      const ms = performance.now() - t0;
      console.log(
        `      solveSparseAssignment 6000x10000 k=64 ${layout}: ${ms.toFixed(0)} ms, matched ${ans.matched}, ` +
          `mean ${(ans.total / ans.matched).toFixed(3)} km (greedy: matched ${greedyMatched}, mean ${(greedyTotal / greedyMatched).toFixed(3)} km)`,
      );
      checkSparseAnswer(rows, nCols, ans);
      assert.ok(ans.matched >= greedyMatched);
      if (ans.matched === greedyMatched) assert.ok(ans.total <= greedyTotal + 1e-6);
    });
  }
});
