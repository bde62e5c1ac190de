import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { DriverPositionSchema, type DriverPosition } from "../../gen/dabba/location/v1/location_pb.js";
import type { TrackOrderResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";

/**
 * The per-order tracking channel. Two producers publish on it: the location service (the
 * carrying driver's accepted positions) and the tracking service's fan-out consumer (the
 * order's events from the event log, once per event across processes). Each tracking process
 * subscribes once per order however many TrackOrder streams watch it.
 *
 * Wire format: one tag byte, then the Protobuf message (1 = location.v1.DriverPosition,
 * 2 = events.v1.Event).
 */
export function trackingChannel(orderId: string): string {
  return `tracking:${orderId}`;
}

/**
 * A decoded position. `response` is the TrackOrder message built from it, memoized by the first
 * stream that sends it (the hub hands every watcher of the order the same signal object).
 */
export interface PositionSignal {
  kind: "position";
  position: DriverPosition;
  response?: TrackOrderResponse;
}
export type TrackingSignal = PositionSignal | { kind: "event"; event: Event };

const TAG_POSITION = 1;
const TAG_EVENT = 2;

export function encodePosition(position: DriverPosition): Uint8Array {
  return frame(TAG_POSITION, toBinary(DriverPositionSchema, position));
}

export function encodeEvent(event: Event): Uint8Array {
  return frame(TAG_EVENT, toBinary(EventSchema, event));
}

/** Frames an events.v1.Event that is already encoded (as stored on the event log) without re-encoding it. */
export function encodeEventBytes(eventBinary: Uint8Array): Uint8Array {
  return frame(TAG_EVENT, eventBinary);
}

/** Decodes a channel message; throws on an unknown tag or a malformed body. */
export function decodeSignal(data: Uint8Array): TrackingSignal {
  const body = data.subarray(1);
  switch (data[0]) {
    case TAG_POSITION:
      return { kind: "position", position: fromBinary(DriverPositionSchema, body), response: undefined };
    case TAG_EVENT:
      return { kind: "event", event: fromBinary(EventSchema, body) };
    default:
      throw new Error(`unknown tracking signal tag ${data[0]}`);
  }
}

function frame(tag: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 1);
  out[0] = tag;
  out.set(body, 1);
  return out;
}
