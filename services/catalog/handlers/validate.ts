import { invalid } from "../../platform/errors.js";

/** Shared request checks; each throws INVALID_ARGUMENT naming the field. */

export const MAX_ID_CHARS = 128;

export function requireId(field: string, v: string): string {
  if (!v) throw invalid(field, "required");
  if (v.length > MAX_ID_CHARS) throw invalid(field, `at most ${MAX_ID_CHARS} characters`);
  return v;
}

export { requireLatLng } from "../../platform/errors.js";
