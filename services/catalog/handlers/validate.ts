import type { LatLng } from "../../../gen/dabba/common/v1/common_pb.js";
import { invalid } from "../../platform/errors.js";
import { latLngProblem } from "../domain.js";

/** Shared request checks; each throws INVALID_ARGUMENT naming the field. */

export const MAX_ID_CHARS = 128;

export function requireId(field: string, v: string): string {
  if (!v) throw invalid(field, "required");
  if (v.length > MAX_ID_CHARS) throw invalid(field, `at most ${MAX_ID_CHARS} characters`);
  return v;
}

export function requireLatLng(field: string, p: LatLng | undefined): { lat: number; lng: number } {
  if (!p) throw invalid(field, "required");
  const problem = latLngProblem(p);
  if (problem) throw invalid(`${field}.${problem.startsWith("lat") ? "lat" : "lng"}`, problem);
  return { lat: p.lat, lng: p.lng };
}
