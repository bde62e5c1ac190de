import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";

/** Awaits a call that must fail with code (and, when given, a message matching `message`); returns the error. */
export async function expectCode(p: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected ${Code[code]}, but the call succeeded`);
  const ce = ConnectError.from(err);
  assert.equal(Code[ce.code], Code[code], ce.message);
  if (message) assert.match(ce.rawMessage, message);
  return ce;
}
