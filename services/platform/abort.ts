/**
 * The promise, or a rejection with the signal's reason as soon as it aborts (how a network
 * transport stops waiting). The promise keeps running; its outcome is then ignored.
 */
export function raceSignal<T>(signal: AbortSignal, promise: Promise<T>): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/** Hooks of observeStream. */
export interface StreamHooks {
  /** Called with what the source threw; returns the error to throw instead (e.g. a mapped status). */
  error?(err: unknown): unknown;
  /** Called once when the stream ends: completed is false after an error or when the consumer stopped early. */
  end?(completed: boolean): void;
}

/**
 * The source's messages, with error mapping and an end hook, as a plain iterator instead of an
 * async generator per call: a wrapper around every long-lived stream (error mapping, request
 * log) costs one small object and one promise reaction per message, not a generator frame.
 */
export function observeStream<T>(source: AsyncIterable<T>, hooks: StreamHooks): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator]() {
      const it = source[Symbol.asyncIterator]();
      let ended = false;
      const end = (completed: boolean) => {
        if (ended) return;
        ended = true;
        hooks.end?.(completed);
      };
      const fail = (err: unknown): never => {
        const mapped = hooks.error ? hooks.error(err) : err;
        end(false);
        throw mapped;
      };
      const out: AsyncIterator<T> = {
        next() {
          let p: Promise<IteratorResult<T>>;
          try {
            p = it.next();
          } catch (err) {
            return Promise.reject(fail(err));
          }
          return p.then((r) => {
            if (r.done) end(true);
            return r;
          }, fail);
        },
        return(value?: unknown) {
          end(false);
          if (!it.return) return Promise.resolve({ done: true, value } as IteratorResult<T>);
          return it.return(value).catch(fail);
        },
      };
      return out;
    },
  };
}
