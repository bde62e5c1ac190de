import assert from "node:assert/strict";
import fc from "fast-check";
import {
  STATUSES,
  basisPoints,
  canSee,
  computeTotals,
  decide,
  type Caller,
  type Command,
  type CommandRequest,
  type Decision,
  type OrderFacts,
  type Status,
} from "../../services/order/domain.js";

// The expected table below is written out by hand from the rules in DESIGN.md section 3 and the
// order issue; it is deliberately not derived from domain.ts.
//
// Columns: order situations. "+d" means driver D1 is assigned.
const COLUMNS: { name: string; status: Status; driver: string | null; cancelledBy?: { role: Caller["role"]; id: string } }[] = [
  { name: "PP", status: "PAYMENT_PENDING", driver: null },
  { name: "PL", status: "PLACED", driver: null },
  { name: "CO", status: "CONFIRMED", driver: null },
  { name: "CO+d", status: "CONFIRMED", driver: "D1" },
  { name: "PR", status: "PREPARING", driver: null },
  { name: "PR+d", status: "PREPARING", driver: "D1" },
  { name: "RE", status: "READY_FOR_PICKUP", driver: null },
  { name: "RE+d", status: "READY_FOR_PICKUP", driver: "D1" },
  { name: "PU+d", status: "PICKED_UP", driver: "D1" },
  { name: "ER+d", status: "EN_ROUTE", driver: "D1" },
  { name: "DE+d", status: "DELIVERED", driver: "D1" },
  { name: "CA/cust", status: "CANCELLED", driver: null, cancelledBy: { role: "customer", id: "C1" } },
  { name: "CA/rest", status: "CANCELLED", driver: null, cancelledBy: { role: "restaurant", id: "R1" } },
  { name: "CA/ops", status: "CANCELLED", driver: null, cancelledBy: { role: "ops", id: "O1" } },
];

const PRINCIPALS: Record<string, Caller> = {
  C1: { role: "customer", sub: "C1" }, // the order's customer
  C2: { role: "customer", sub: "C2" }, // another customer
  R1: { role: "restaurant", sub: "tablet-1", restaurantId: "R1" }, // the order's restaurant
  R2: { role: "restaurant", sub: "tablet-2", restaurantId: "R2" },
  D1: { role: "driver", sub: "D1" }, // the assigned driver where one is assigned
  D2: { role: "driver", sub: "D2" },
  OPS: { role: "ops", sub: "O1" },
  SVC: { role: "service", sub: "dispatch" },
};

// T transition, N noop (current order), F FAILED_PRECONDITION, P PERMISSION_DENIED, X NOT_FOUND.
//                                  PP PL CO CO+d PR PR+d RE RE+d PU+d ER+d DE+d CA/c CA/r CA/o
const X14 = "XXXXXXXXXXXXXX";
const P14 = "PPPPPPPPPPPPPP";
const DRIVER_SEES_ONLY = "XXXPXPXPPPPXXX";
type Variant = { label: string; req: CommandRequest };
const EXPECTED: { variant: Variant; rows: Record<keyof typeof PRINCIPALS, string> }[] = [
  {
    variant: { label: "accept", req: { command: "accept" } },
    rows: { C1: P14, C2: X14, R1: "FTNNNNNNNNNFFF", R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FTNNNNNNNNNFFF", SVC: "FTNNNNNNNNNFFF" },
  },
  {
    variant: { label: "reject", req: { command: "reject" } },
    rows: { C1: P14, C2: X14, R1: "FTFFFFFFFFFFNF", R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FTFFFFFFFFFFFN", SVC: "FTFFFFFFFFFFFF" },
  },
  {
    variant: { label: "start_preparing", req: { command: "start_preparing" } },
    rows: { C1: P14, C2: X14, R1: "FFTTNNNNNNNFFF", R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FFTTNNNNNNNFFF", SVC: P14 },
  },
  {
    variant: { label: "mark_ready", req: { command: "mark_ready" } },
    rows: { C1: P14, C2: X14, R1: "FFFFTTNNNNNFFF", R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FFFFTTNNNNNFFF", SVC: P14 },
  },
  {
    variant: { label: "confirm_pickup", req: { command: "confirm_pickup" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: "XXXFXTXTNNNXXX", D2: X14, OPS: "FFFFFTFTNNNFFF", SVC: P14 },
  },
  {
    variant: { label: "mark_en_route", req: { command: "mark_en_route" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: "XXXFXFXFTNNXXX", D2: X14, OPS: "FFFFFFFFTNNFFF", SVC: "FFFFFFFFTNNFFF" },
  },
  {
    variant: { label: "confirm_delivery", req: { command: "confirm_delivery" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: "XXXFXFXFTTNXXX", D2: X14, OPS: "FFFFFFFFTTNFFF", SVC: P14 },
  },
  {
    variant: { label: "cancel", req: { command: "cancel" } },
    rows: { C1: "TTTTTTTTFFFNFF", C2: X14, R1: "TTTTTTTTFFFFNF", R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "TTTTTTTTTTFFFN", SVC: P14 },
  },
  {
    variant: { label: "assign_driver(D2)", req: { command: "assign_driver", driverId: "D2", fencingToken: 5 } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FFTFTFTFFFFFFF", SVC: "FFTFTFTFFFFFFF" },
  },
  {
    variant: { label: "assign_driver(D1)", req: { command: "assign_driver", driverId: "D1", fencingToken: 5 } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FFTNTNTNNNNFFF", SVC: "FFTNTNTNNNNFFF" },
  },
  {
    variant: { label: "unassign_driver(D1)", req: { command: "unassign_driver", driverId: "D1" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "NNNTNTNTFFFNNN", SVC: "NNNTNTNTFFFNNN" },
  },
  {
    variant: { label: "unassign_driver(D2)", req: { command: "unassign_driver", driverId: "D2" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "NNNFNFNFFFFNNN", SVC: "NNNFNFNFFFFNNN" },
  },
  {
    // Not yet flagged (the flagged case is below): only before pickup and without a driver.
    variant: { label: "flag_dispatch", req: { command: "flag_dispatch" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: "FFTFTFTFFFFFFF", SVC: "FFTFTFTFFFFFFF" },
  },
  {
    // The payment reconciler (service only): the authorization was approved / declined or never confirmed.
    variant: { label: "payment_settled", req: { command: "payment_settled" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: P14, SVC: "TNNNNNNNNNNFFF" },
  },
  {
    variant: { label: "payment_failed", req: { command: "payment_failed" } },
    rows: { C1: P14, C2: X14, R1: P14, R2: X14, D1: DRIVER_SEES_ONLY, D2: X14, OPS: P14, SVC: "TFFFFFFFFFFFFF" },
  },
];

// Statuses entered by each transition, by command and from-status (hand written).
function expectedPath(command: Command, from: Status): Status[] {
  switch (command) {
    case "accept": return ["CONFIRMED"];
    case "reject": return ["CANCELLED"];
    case "start_preparing": return ["PREPARING"];
    case "mark_ready": return ["READY_FOR_PICKUP"];
    case "confirm_pickup": return from === "PREPARING" ? ["READY_FOR_PICKUP", "PICKED_UP"] : ["PICKED_UP"];
    case "mark_en_route": return ["EN_ROUTE"];
    case "confirm_delivery": return ["DELIVERED"];
    case "cancel": return ["CANCELLED"];
    case "assign_driver":
    case "unassign_driver":
    case "flag_dispatch": return [];
    case "payment_settled": return ["PLACED"];
    case "payment_failed": return ["CANCELLED"];
  }
}

const POLICY = { lateCancelFeeBps: 5000 };
const SUBTOTAL = 2399;

function factsOf(col: (typeof COLUMNS)[number], extra: Partial<OrderFacts> = {}): OrderFacts {
  return {
    status: col.status,
    customerId: "C1",
    restaurantId: "R1",
    driverId: col.driver,
    lastFencingToken: 0,
    subtotalMinor: SUBTOTAL,
    cancelledBy: col.cancelledBy ?? null,
    dispatchFlagged: false,
    ...extra,
  };
}

function letter(d: Decision): string {
  if (d.kind === "transition") return "T";
  if (d.kind === "noop") return "N";
  return { FAILED_PRECONDITION: "F", PERMISSION_DENIED: "P", NOT_FOUND: "X" }[d.code];
}

describe("order domain: the transition table", () => {
  it("has a well-formed expected table (8 principals x 14 situations per command variant)", () => {
    for (const e of EXPECTED) {
      assert.deepEqual(Object.keys(e.rows).sort(), Object.keys(PRINCIPALS).sort());
      for (const row of Object.values(e.rows)) assert.equal(row.length, COLUMNS.length);
    }
  });

  for (const e of EXPECTED) {
    describe(`decide(${e.variant.label})`, () => {
      for (const [who, row] of Object.entries(e.rows)) {
        it(`for ${who} matches ${row}`, () => {
          const principal = PRINCIPALS[who];
          const got = COLUMNS.map((col) => letter(decide(e.variant.req, principal, factsOf(col), POLICY))).join("");
          assert.equal(got, row, `${e.variant.label} by ${who}\n  columns ${COLUMNS.map((c) => c.name).join(" ")}`);

          COLUMNS.forEach((col, i) => {
            const d = decide(e.variant.req, principal, factsOf(col), POLICY);
            if (d.kind === "transition") {
              assert.deepEqual(d.statuses, expectedPath(e.variant.req.command, col.status), `${e.variant.label} from ${col.name}`);
              assert.equal(d.from, col.status);
              const lateFee = e.variant.req.command === "cancel" && principal.role === "customer" && ["PREPARING", "READY_FOR_PICKUP"].includes(col.status);
              assert.equal(d.feeMinor, lateFee ? 1200 : 0, `fee of ${e.variant.label} by ${who} from ${col.name}`);
              assert.equal(d.releaseDriverId, e.variant.req.command === "cancel" ? col.driver : null);
              if (e.variant.req.command === "assign_driver") assert.equal(d.assignDriverId, e.variant.req.driverId);
              if (e.variant.req.command === "unassign_driver") assert.equal(d.unassignDriverId, e.variant.req.driverId);
              assert.equal(d.flagDispatch, e.variant.req.command === "flag_dispatch" ? true : undefined);
            }
            if (d.kind === "deny" && d.code === "FAILED_PRECONDITION") {
              assert.match(d.message, new RegExp(`\\b${col.status}\\b`), `message names the current state: ${d.message}`);
            }
            if (row[i] === "X") assert.equal(canSee(principal, factsOf(col)), false);
          });
        });
      }
    });
  }

  it("covers every command and every status", () => {
    const commands = new Set(EXPECTED.map((e) => e.variant.req.command));
    assert.equal(commands.size, 13);
    assert.deepEqual([...new Set(COLUMNS.map((c) => c.status))].sort(), [...STATUSES].sort());
  });

  it("names the required state in FAILED_PRECONDITION", () => {
    const d = decide({ command: "start_preparing" }, PRINCIPALS.R1, factsOf(COLUMNS[1]), POLICY);
    assert.equal(d.kind, "deny");
    assert.match((d as { message: string }).message, /PLACED.*StartPreparing.*CONFIRMED/);
    const c = decide({ command: "cancel" }, PRINCIPALS.C1, factsOf(COLUMNS[8]), POLICY);
    assert.match((c as { message: string }).message, /order is PICKED_UP;.*requires PAYMENT_PENDING, PLACED, CONFIRMED, PREPARING or READY_FOR_PICKUP/);
  });

  it("refuses a stale fencing token and lets ops assign manually with token 0", () => {
    const col = COLUMNS[2];
    const stale = decide({ command: "assign_driver", driverId: "D2", fencingToken: 3 }, PRINCIPALS.SVC, factsOf(col, { lastFencingToken: 4 }), POLICY);
    assert.equal(letter(stale), "F");
    const equal = decide({ command: "assign_driver", driverId: "D2", fencingToken: 4 }, PRINCIPALS.SVC, factsOf(col, { lastFencingToken: 4 }), POLICY);
    assert.equal(letter(equal), "T");
    const manual = decide({ command: "assign_driver", driverId: "D2", fencingToken: 0 }, PRINCIPALS.OPS, factsOf(col, { lastFencingToken: 4 }), POLICY);
    assert.equal(manual.kind, "transition");
    assert.equal((manual as { fencingToken?: number }).fencingToken, undefined);
    const svcZero = decide({ command: "assign_driver", driverId: "D2", fencingToken: 0 }, PRINCIPALS.SVC, factsOf(col, { lastFencingToken: 4 }), POLICY);
    assert.equal(letter(svcZero), "F");
  });

  it("does not let a restaurant act on another restaurant's order even with the same token subject", () => {
    const r = { role: "restaurant" as const, sub: "C1", restaurantId: "R9" };
    assert.equal(letter(decide({ command: "accept" }, r, factsOf(COLUMNS[1]), POLICY)), "X");
  });
});

describe("order domain: a flagged order", () => {
  const flagged = (col: (typeof COLUMNS)[number]) => factsOf(col, { dispatchFlagged: true });

  it("answers a repeated flag with the current order in every state, and only to service and ops", () => {
    for (const [who, row] of Object.entries({ SVC: "NNNNNNNNNNNNNN", OPS: "NNNNNNNNNNNNNN", C1: P14, R1: P14, D1: DRIVER_SEES_ONLY, C2: X14 })) {
      const got = COLUMNS.map((col) => letter(decide({ command: "flag_dispatch" }, PRINCIPALS[who]!, flagged(col), POLICY))).join("");
      assert.equal(got, row, who);
    }
  });

  it("names the state when a driver holds the order", () => {
    const d = decide({ command: "flag_dispatch" }, PRINCIPALS.SVC, factsOf(COLUMNS[5]), POLICY);
    assert.deepEqual(d, { kind: "deny", code: "FAILED_PRECONDITION", message: "order is PREPARING with a driver assigned; FlagDispatch requires no driver" });
    const late = decide({ command: "flag_dispatch" }, PRINCIPALS.SVC, factsOf(COLUMNS[8]), POLICY);
    assert.match((late as { message: string }).message, /^order is PICKED_UP; FlagDispatch requires CONFIRMED, PREPARING or READY_FOR_PICKUP$/);
  });

  it("gives a customer a full refund while PREPARING or READY_FOR_PICKUP, with the same transitions as unflagged", () => {
    //                                   PP PL CO CO+d PR PR+d RE RE+d PU+d ER+d DE+d CA/c CA/r CA/o
    const expected = "TTTTTTTTFFFNFF";
    const got = COLUMNS.map((col) => decide({ command: "cancel" }, PRINCIPALS.C1, flagged(col), POLICY));
    assert.equal(got.map(letter).join(""), expected);
    for (const [i, d] of got.entries()) {
      if (d.kind === "transition") assert.equal(d.feeMinor, 0, `fee cancelling a flagged order from ${COLUMNS[i]!.name}`);
    }
    // The same order unflagged keeps the fee: the flag is what waives it.
    const pr = decide({ command: "cancel" }, PRINCIPALS.C1, factsOf(COLUMNS[4]), POLICY);
    assert.equal(pr.kind === "transition" && pr.feeMinor, 1200);
    // After pickup the flag changes nothing: still no customer cancellation.
    assert.equal(letter(decide({ command: "cancel" }, PRINCIPALS.C1, flagged(COLUMNS[8]), POLICY)), "F");
  });
});

describe("order domain: money", () => {
  it("rounds basis points half up", () => {
    assert.equal(basisPoints(2399, 500), 120); // 119.95
    assert.equal(basisPoints(2390, 500), 120); // 119.5
    assert.equal(basisPoints(2389, 500), 119); // 119.45
    assert.equal(basisPoints(0, 500), 0);
  });
  it("totals subtotal + delivery fee + tax + tip", () => {
    assert.deepEqual(computeTotals({ subtotalMinor: 2000, deliveryFeeMinor: 299, tipMinor: 150, taxBps: 500 }), {
      subtotalMinor: 2000,
      deliveryFeeMinor: 299,
      taxMinor: 100,
      tipMinor: 150,
      totalMinor: 2549,
    });
  });
});

// ---------------------------------------------------------------------------------------------
// Properties.

// The edges of the lifecycle, written out by hand (confirm_pickup from PREPARING passes READY).
const EDGES = new Set([
  "PAYMENT_PENDING>CANCELLED",
  "PLACED>CONFIRMED", "PLACED>CANCELLED",
  "CONFIRMED>PREPARING", "CONFIRMED>CANCELLED",
  "PREPARING>READY_FOR_PICKUP", "PREPARING>CANCELLED",
  "READY_FOR_PICKUP>PICKED_UP", "READY_FOR_PICKUP>CANCELLED",
  "PICKED_UP>EN_ROUTE", "PICKED_UP>DELIVERED", "PICKED_UP>CANCELLED",
  "EN_ROUTE>DELIVERED", "EN_ROUTE>CANCELLED",
]);

const arbCaller = fc.constantFrom(...Object.values(PRINCIPALS));
const arbRequest: fc.Arbitrary<CommandRequest> = fc.oneof(
  fc.constantFrom<Command>("accept", "reject", "start_preparing", "mark_ready", "confirm_pickup", "mark_en_route", "confirm_delivery", "cancel").map((command) => ({ command })),
  fc.record({ command: fc.constant<Command>("assign_driver"), driverId: fc.constantFrom("D1", "D2"), fencingToken: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ command: fc.constant<Command>("unassign_driver"), driverId: fc.constantFrom("D1", "D2") }),
  fc.constant<CommandRequest>({ command: "flag_dispatch" }),
);
const arbFacts: fc.Arbitrary<OrderFacts> = fc.record({
  status: fc.constantFrom(...STATUSES),
  customerId: fc.constantFrom("C1", "C2"),
  restaurantId: fc.constantFrom("R1", "R2"),
  driverId: fc.constantFrom(null, "D1", "D2"),
  lastFencingToken: fc.integer({ min: 0, max: 5 }),
  subtotalMinor: fc.integer({ min: 0, max: 1_000_000 }),
  cancelledBy: fc.constantFrom(null, { role: "customer" as const, id: "C1" }, { role: "restaurant" as const, id: "R1" }, { role: "ops" as const, id: "O1" }),
  dispatchFlagged: fc.boolean(),
});

describe("order domain: properties", () => {
  it("no sequence of commands leaves the declared lifecycle, and drivers are held only where allowed", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(arbRequest, arbCaller), { maxLength: 40 }), (steps) => {
        const f: OrderFacts = { status: "PLACED", customerId: "C1", restaurantId: "R1", driverId: null, lastFencingToken: 0, subtotalMinor: 1000, cancelledBy: null, dispatchFlagged: false };
        for (const [req, caller] of steps) {
          const d = decide(req, caller, { ...f }, POLICY);
          if (d.kind !== "transition") continue;
          let cur = f.status;
          for (const s of d.statuses) {
            assert.ok(EDGES.has(`${cur}>${s}`), `${cur} -> ${s} by ${req.command}`);
            cur = s;
          }
          f.status = cur;
          if (d.assignDriverId) {
            assert.ok(["CONFIRMED", "PREPARING", "READY_FOR_PICKUP"].includes(f.status));
            f.driverId = d.assignDriverId;
            if (d.fencingToken !== undefined) f.lastFencingToken = d.fencingToken;
          }
          if (d.unassignDriverId) f.driverId = null;
          if (d.flagDispatch) {
            assert.ok(!f.dispatchFlagged, "flagged twice");
            assert.ok(["CONFIRMED", "PREPARING", "READY_FOR_PICKUP"].includes(f.status) && f.driverId === null);
            f.dispatchFlagged = true;
          }
          if (f.status === "CANCELLED") {
            f.driverId = null;
            f.cancelledBy = { role: caller.role, id: caller.role === "restaurant" ? caller.restaurantId! : caller.sub };
          }
          if (["PICKED_UP", "EN_ROUTE", "DELIVERED"].includes(f.status)) assert.notEqual(f.driverId, null);
        }
      }),
      { numRuns: 500 },
    );
  });

  it("terminal states accept nothing but noops", () => {
    fc.assert(
      fc.property(arbRequest, arbCaller, arbFacts, (req, caller, facts) => {
        fc.pre(facts.status === "DELIVERED" || facts.status === "CANCELLED");
        assert.notEqual(decide(req, caller, facts, POLICY).kind, "transition");
      }),
      { numRuns: 2000 },
    );
  });

  it("keeps a cancellation fee only for a customer cancelling an unflagged order while PREPARING or READY_FOR_PICKUP", () => {
    fc.assert(
      fc.property(arbRequest, arbCaller, arbFacts, fc.integer({ min: 0, max: 10000 }), (req, caller, facts, bps) => {
        const d = decide(req, caller, facts, { lateCancelFeeBps: bps });
        if (d.kind !== "transition") return;
        const late = req.command === "cancel" && caller.role === "customer" && !facts.dispatchFlagged && (facts.status === "PREPARING" || facts.status === "READY_FOR_PICKUP");
        if (late) assert.equal(d.feeMinor, Math.floor((facts.subtotalMinor * bps + 5000) / 10000));
        else assert.equal(d.feeMinor, 0);
      }),
      { numRuns: 3000 },
    );
  });

  it("never lets anyone but ops cancel after pickup, and never a driver", () => {
    fc.assert(
      fc.property(arbCaller, arbFacts, (caller, facts) => {
        const d = decide({ command: "cancel" }, caller, facts, POLICY);
        if (caller.role === "driver") assert.notEqual(d.kind, "transition");
        if (["PICKED_UP", "EN_ROUTE"].includes(facts.status) && d.kind === "transition") assert.equal(caller.role, "ops");
      }),
      { numRuns: 2000 },
    );
  });
});
