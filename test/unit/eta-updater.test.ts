import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { EtaRangeSchema } from "../../gen/dabba/common/v1/common_pb.js";
import { OrderSchema, OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { movedFrom, stageOf } from "../../services/order/eta-updater.js";

describe("ETA updater rules", () => {
  const T = 1_800_000_000_000;
  const order = (low?: number, high?: number) =>
    create(OrderSchema, { id: "o1", eta: low === undefined || high === undefined ? undefined : create(EtaRangeSchema, { earliestAt: timestampFromMs(low), latestAt: timestampFromMs(high) }) });

  it("writes an estimate only when a bound moved by the threshold, or none is stored", () => {
    assert.equal(movedFrom(order(), T, T + 600_000, 60_000), true, "nothing stored yet");
    assert.equal(movedFrom(order(T, T + 600_000), T + 59_999, T + 600_000 - 59_999, 60_000), false, "both under a minute");
    assert.equal(movedFrom(order(T, T + 600_000), T + 60_000, T + 600_000, 60_000), true, "the low end by a minute");
    assert.equal(movedFrom(order(T, T + 600_000), T, T + 540_000, 60_000), true, "the high end by a minute, earlier");
  });

  it("keeps estimating open orders only", () => {
    assert.equal(stageOf(OrderStatus.PLACED), "quote");
    assert.equal(stageOf(OrderStatus.PREPARING), "kitchen");
    assert.equal(stageOf(OrderStatus.READY_FOR_PICKUP), "ready");
    assert.equal(stageOf(OrderStatus.EN_ROUTE), "carried");
    assert.equal(stageOf(OrderStatus.DELIVERED), undefined);
    assert.equal(stageOf(OrderStatus.CANCELLED), undefined);
  });
});
