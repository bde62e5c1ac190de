/**
 * A request body for a client stream that the test feeds as it goes: push() messages, end()
 * to half-close. The transport pulls from it, so HTTP/2 flow control applies as in an app.
 */
export interface PushStream<T> extends AsyncIterable<T> {
  push(msg: T): void;
  end(): void;
}

export function pushStream<T>(): PushStream<T> {
  const queue: T[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  return {
    push(msg) {
      if (ended) throw new Error("push after end");
      queue.push(msg);
      notify();
    },
    end() {
      ended = true;
      notify();
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        if (queue.length > 0) {
          yield queue.shift()!;
          continue;
        }
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    },
  };
}

/** Moves a point by metres north and east (small distances; good to well under a metre at city scale). */
export function offsetMetres(p: { lat: number; lng: number }, north: number, east: number): { lat: number; lng: number } {
  const dLat = north / 111_320;
  const dLng = east / (111_320 * Math.cos((p.lat * Math.PI) / 180));
  return { lat: p.lat + dLat, lng: p.lng + dLng };
}
