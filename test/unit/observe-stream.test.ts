import assert from "node:assert/strict";
import { observeStream, raceSignal } from "../../services/platform/abort.js";

async function* source(n: number, failAt?: number) {
  for (let i = 0; i < n; i++) {
    if (i === failAt) throw new Error(`boom at ${i}`);
    yield i;
  }
}

describe("observeStream", () => {
  it("passes every message through and reports a completed end once", async () => {
    const ends: boolean[] = [];
    const got: number[] = [];
    for await (const v of observeStream(source(3), { end: (c) => ends.push(c) })) got.push(v);
    assert.deepEqual(got, [0, 1, 2]);
    assert.deepEqual(ends, [true]);
  });

  it("throws the mapped error and reports an incomplete end", async () => {
    const ends: boolean[] = [];
    const got: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const v of observeStream(source(5, 2), { error: (e) => new Error(`mapped: ${(e as Error).message}`), end: (c) => ends.push(c) })) got.push(v);
      })(),
      /mapped: boom at 2/,
    );
    assert.deepEqual(got, [0, 1]);
    assert.deepEqual(ends, [false]);
  });

  it("forwards an early stop to the source and reports an incomplete end", async () => {
    const ends: boolean[] = [];
    let cleaned = false;
    async function* watched() {
      try {
        yield 1;
        yield 2;
      } finally {
        cleaned = true;
      }
    }
    for await (const _ of observeStream(watched(), { end: (c) => ends.push(c) })) break;
    assert.equal(cleaned, true, "the source's finally ran");
    assert.deepEqual(ends, [false]);
  });
});

describe("raceSignal", () => {
  it("settles with the promise, or rejects with the abort reason first", async () => {
    assert.equal(await raceSignal(new AbortController().signal, Promise.resolve(7)), 7);
    const ac = new AbortController();
    const pending = raceSignal(ac.signal, new Promise<number>(() => {}));
    ac.abort(new Error("gone"));
    await assert.rejects(pending, /gone/);
    await assert.rejects(raceSignal(AbortSignal.abort(new Error("already")), Promise.resolve(1)), /already/);
  });
});
