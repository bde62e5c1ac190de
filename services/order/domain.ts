/**
 * The order's rules, pure: the one declared transition table every writer goes through
 * (decide), who may see an order, and the money math. No I/O here.
 */

export const STATUSES = [
  "PAYMENT_PENDING",
  "PLACED",
  "CONFIRMED",
  "PREPARING",
  "READY_FOR_PICKUP",
  "PICKED_UP",
  "EN_ROUTE",
  "DELIVERED",
  "CANCELLED",
] as const;
export type Status = (typeof STATUSES)[number];

export const TERMINAL_STATUSES: readonly Status[] = ["DELIVERED", "CANCELLED"];
/** Statuses in which a driver may be assigned or unassigned, and in which dispatch may flag an order. */
export const DRIVER_ASSIGNABLE: readonly Status[] = ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP"];
/** Orders a restaurant still has to act on or hand over (its feed and default list). */
export const RESTAURANT_OPEN_STATUSES: readonly Status[] = [
  "PLACED",
  "CONFIRMED",
  "PREPARING",
  "READY_FOR_PICKUP",
  "PICKED_UP",
  "EN_ROUTE",
];

export const COMMANDS = [
  "accept",
  "reject",
  "start_preparing",
  "mark_ready",
  "confirm_pickup",
  "mark_en_route",
  "confirm_delivery",
  "cancel",
  "assign_driver",
  "unassign_driver",
  "flag_dispatch",
  "payment_settled",
  "payment_failed",
] as const;
export type Command = (typeof COMMANDS)[number];

export type Role = "customer" | "restaurant" | "driver" | "ops" | "service";

/** The verified caller (structurally the platform's Principal). */
export interface Caller {
  role: Role;
  sub: string;
  restaurantId?: string;
}

/** Who did something, as stored: restaurant actions are recorded under the restaurant id. */
export interface ActorRef {
  role: Role;
  id: string;
}

/** What decide needs to know about the order as it is now. */
export interface OrderFacts {
  status: Status;
  customerId: string;
  restaurantId: string;
  driverId: string | null;
  lastFencingToken: number;
  subtotalMinor: number;
  cancelledBy: ActorRef | null;
  /** Dispatch flagged the order (nobody took it in time); it stays flagged. */
  dispatchFlagged: boolean;
}

export interface CommandRequest {
  command: Command;
  /** assign_driver / unassign_driver: the driver named in the request. */
  driverId?: string;
  /** assign_driver: the offer's fencing token; 0 is a manual assignment. */
  fencingToken?: number;
}

export interface Policy {
  /** Fee kept on a late customer cancellation, in basis points of the subtotal. */
  lateCancelFeeBps: number;
}

export type DenialCode = "FAILED_PRECONDITION" | "PERMISSION_DENIED" | "NOT_FOUND";

export type Decision =
  | {
      kind: "transition";
      command: Command;
      from: Status;
      /** Statuses entered, in order (empty for driver assignment changes). */
      statuses: Status[];
      /** Fee the customer still pays (cancel only), minor units. */
      feeMinor: number;
      /** The driver released by a cancellation, if one was assigned. */
      releaseDriverId: string | null;
      /** assign_driver: the driver to set; unassign_driver: the driver to clear. */
      assignDriverId?: string;
      unassignDriverId?: string;
      /** assign_driver: the fencing token to record (undefined leaves the stored one). */
      fencingToken?: number;
      /** flag_dispatch: set the order's dispatch flag. */
      flagDispatch?: true;
    }
  | { kind: "noop" }
  | { kind: "deny"; code: DenialCode; message: string };

/** One row of the transition table: `command` by one of `actors` moves `from` through `to`. */
export interface TransitionRule {
  command: Command;
  from: Status;
  /** Statuses entered in order; empty for driver assignment (not a status change). */
  to: readonly Status[];
  actors: readonly Role[];
  /** The customer keeps paying config.lateCancelFeeBps of the subtotal, unless dispatch flagged the order. */
  lateFee?: boolean;
  /** Needs an assigned driver (the driver is the actor, or ops acts for it). */
  needsDriver?: boolean;
}

const KITCHEN: readonly Role[] = ["restaurant", "ops"];
const CARRIER: readonly Role[] = ["driver", "ops"];
const DISPATCH: readonly Role[] = ["service", "ops"];

/** THE transition table. Every writer of orders.status goes through decide(), which reads only this. */
export const TRANSITIONS: readonly TransitionRule[] = Object.freeze([
  // A service answers for a restaurant that did not answer in time (its answer policy).
  { command: "accept", from: "PLACED", to: ["CONFIRMED"], actors: [...KITCHEN, "service"] },
  { command: "reject", from: "PLACED", to: ["CANCELLED"], actors: [...KITCHEN, "service"] },
  { command: "start_preparing", from: "CONFIRMED", to: ["PREPARING"], actors: KITCHEN },
  { command: "mark_ready", from: "PREPARING", to: ["READY_FOR_PICKUP"], actors: KITCHEN },
  { command: "confirm_pickup", from: "READY_FOR_PICKUP", to: ["PICKED_UP"], actors: CARRIER, needsDriver: true },
  { command: "confirm_pickup", from: "PREPARING", to: ["READY_FOR_PICKUP", "PICKED_UP"], actors: CARRIER, needsDriver: true },
  { command: "mark_en_route", from: "PICKED_UP", to: ["EN_ROUTE"], actors: ["driver", "service", "ops"] },
  { command: "confirm_delivery", from: "PICKED_UP", to: ["DELIVERED"], actors: CARRIER },
  { command: "confirm_delivery", from: "EN_ROUTE", to: ["DELIVERED"], actors: CARRIER },

  { command: "cancel", from: "PAYMENT_PENDING", to: ["CANCELLED"], actors: ["customer", "restaurant", "ops"] },
  { command: "cancel", from: "PLACED", to: ["CANCELLED"], actors: ["customer", "restaurant", "ops"] },
  { command: "cancel", from: "CONFIRMED", to: ["CANCELLED"], actors: ["customer", "restaurant", "ops"] },
  { command: "cancel", from: "PREPARING", to: ["CANCELLED"], actors: ["customer"], lateFee: true },
  { command: "cancel", from: "PREPARING", to: ["CANCELLED"], actors: KITCHEN },
  { command: "cancel", from: "READY_FOR_PICKUP", to: ["CANCELLED"], actors: ["customer"], lateFee: true },
  { command: "cancel", from: "READY_FOR_PICKUP", to: ["CANCELLED"], actors: KITCHEN },
  { command: "cancel", from: "PICKED_UP", to: ["CANCELLED"], actors: ["ops"] },
  { command: "cancel", from: "EN_ROUTE", to: ["CANCELLED"], actors: ["ops"] },

  // The payment reconciler settles a PAYMENT_PENDING order with the gateway's truth.
  { command: "payment_settled", from: "PAYMENT_PENDING", to: ["PLACED"], actors: ["service"] },
  { command: "payment_failed", from: "PAYMENT_PENDING", to: ["CANCELLED"], actors: ["service"] },

  ...DRIVER_ASSIGNABLE.map((from) => ({ command: "assign_driver" as const, from, to: [], actors: DISPATCH })),
  ...DRIVER_ASSIGNABLE.map((from) => ({ command: "unassign_driver" as const, from, to: [], actors: DISPATCH })),
  ...DRIVER_ASSIGNABLE.map((from) => ({ command: "flag_dispatch" as const, from, to: [], actors: DISPATCH })),
] satisfies TransitionRule[]);

/**
 * When a command's effect has already happened (same target), repeating it answers with the
 * current order instead of an error.
 */
const ALREADY_DONE: Record<Command, (f: OrderFacts, req: CommandRequest, actor: ActorRef) => boolean> = {
  accept: (f) => atOrPast(f.status, "CONFIRMED"),
  start_preparing: (f) => atOrPast(f.status, "PREPARING"),
  mark_ready: (f) => atOrPast(f.status, "READY_FOR_PICKUP"),
  confirm_pickup: (f) => atOrPast(f.status, "PICKED_UP"),
  mark_en_route: (f) => atOrPast(f.status, "EN_ROUTE"),
  confirm_delivery: (f) => f.status === "DELIVERED",
  reject: (f, _r, a) => f.status === "CANCELLED" && sameActor(f.cancelledBy, a),
  cancel: (f, _r, a) => f.status === "CANCELLED" && sameActor(f.cancelledBy, a),
  assign_driver: (f, r) => f.driverId !== null && f.driverId === r.driverId,
  unassign_driver: (f) => f.driverId === null,
  flag_dispatch: (f) => f.dispatchFlagged,
  payment_settled: (f) => atOrPast(f.status, "PLACED"),
  payment_failed: (f, _r, a) => f.status === "CANCELLED" && sameActor(f.cancelledBy, a),
};

const FORWARD: readonly Status[] = STATUSES.slice(0, 8);
function atOrPast(s: Status, target: Status): boolean {
  return s !== "CANCELLED" && FORWARD.indexOf(s) >= FORWARD.indexOf(target);
}
function sameActor(a: ActorRef | null, b: ActorRef): boolean {
  return a !== null && a.role === b.role && a.id === b.id;
}

export function isTerminal(s: Status): boolean {
  return TERMINAL_STATUSES.includes(s);
}

/** The id an action is recorded under: the restaurant id for restaurants, else the subject. */
export function actorRef(c: Caller): ActorRef {
  return { role: c.role, id: c.role === "restaurant" ? (c.restaurantId ?? c.sub) : c.sub };
}

/**
 * Whether the caller may know the order exists: its customer, its restaurant, its assigned
 * driver, ops and services. Everyone else gets NOT_FOUND.
 */
export function canSee(c: Caller, f: Pick<OrderFacts, "customerId" | "restaurantId" | "driverId">): boolean {
  switch (c.role) {
    case "customer":
      return f.customerId === c.sub;
    case "restaurant":
      return c.restaurantId !== undefined && f.restaurantId === c.restaurantId;
    case "driver":
      return f.driverId !== null && f.driverId === c.sub;
    case "ops":
    case "service":
      return true;
  }
}

const NAMES: Record<Command, string> = {
  accept: "AcceptOrder",
  reject: "RejectOrder",
  start_preparing: "StartPreparing",
  mark_ready: "MarkReady",
  confirm_pickup: "ConfirmPickup",
  mark_en_route: "MarkEnRoute",
  confirm_delivery: "ConfirmDelivery",
  cancel: "CancelOrder",
  assign_driver: "AssignDriver",
  unassign_driver: "UnassignDriver",
  flag_dispatch: "FlagDispatch",
  payment_settled: "PaymentSettled",
  payment_failed: "PaymentFailed",
};

function deny(code: DenialCode, message: string): Decision {
  return { kind: "deny", code, message };
}

function listStatuses(s: readonly Status[]): string {
  const u = [...new Set(s)];
  return u.length <= 1 ? (u[0] ?? "none") : `${u.slice(0, -1).join(", ")} or ${u[u.length - 1]}`;
}

/**
 * Decides what `req` by `caller` does to an order in state `facts`: a transition (statuses
 * entered, fee, driver released), a noop (the effect already happened) or a denial.
 */
export function decide(req: CommandRequest, caller: Caller, facts: OrderFacts, policy: Policy): Decision {
  const { command } = req;
  if (!canSee(caller, facts)) return deny("NOT_FOUND", "order not found");

  const rules = TRANSITIONS.filter((r) => r.command === command);
  if (!rules.some((r) => r.actors.includes(caller.role))) {
    const why = caller.role === "driver" && command === "cancel" ? " (a driver releases the assignment instead)" : "";
    return deny("PERMISSION_DENIED", `role ${caller.role} may not call ${NAMES[command]}${why}`);
  }
  const actor = actorRef(caller);

  if (command === "assign_driver" || command === "unassign_driver") {
    return decideDriver(req, caller, facts, rules);
  }
  if (command === "flag_dispatch") return decideFlag(caller, facts, rules);

  const rule = rules.find((r) => r.from === facts.status && r.actors.includes(caller.role));
  if (rule) {
    if (rule.needsDriver && facts.driverId === null) {
      return deny("FAILED_PRECONDITION", `order is ${facts.status} without an assigned driver; ${NAMES[command]} requires an assigned driver`);
    }
    // The platform failed to find a driver for a flagged order: the customer owes nothing for leaving.
    const fee = rule.lateFee && !facts.dispatchFlagged ? basisPoints(facts.subtotalMinor, policy.lateCancelFeeBps) : 0;
    const cancels = rule.to.includes("CANCELLED");
    return {
      kind: "transition",
      command,
      from: facts.status,
      statuses: [...rule.to],
      feeMinor: fee,
      releaseDriverId: cancels ? facts.driverId : null,
    };
  }
  if (ALREADY_DONE[command](facts, req, actor)) return { kind: "noop" };
  const required = rules.filter((r) => r.actors.includes(caller.role)).map((r) => r.from);
  return deny(
    "FAILED_PRECONDITION",
    `order is ${facts.status}; ${NAMES[command]} by ${caller.role} requires ${listStatuses(required)}`,
  );
}

function decideDriver(req: CommandRequest, caller: Caller, f: OrderFacts, rules: TransitionRule[]): Decision {
  const command = req.command;
  const driverId = req.driverId ?? "";
  if (ALREADY_DONE[command](f, req, actorRef(caller))) return { kind: "noop" };
  const allowedFrom = rules.filter((r) => r.actors.includes(caller.role)).map((r) => r.from);
  if (command === "unassign_driver" && f.driverId !== driverId) {
    return deny("FAILED_PRECONDITION", `order is ${f.status} and held by another driver; ${NAMES[command]} requires driver ${driverId}`);
  }
  if (!allowedFrom.includes(f.status)) {
    return deny("FAILED_PRECONDITION", `order is ${f.status}; ${NAMES[command]} requires ${listStatuses(allowedFrom)}`);
  }
  if (command === "unassign_driver") {
    return { kind: "transition", command, from: f.status, statuses: [], feeMinor: 0, releaseDriverId: null, unassignDriverId: driverId };
  }
  if (f.driverId !== null) {
    return deny("FAILED_PRECONDITION", `order is ${f.status} with another driver assigned; ${NAMES[command]} requires no driver`);
  }
  const token = req.fencingToken ?? 0;
  // Token 0 is a manual assignment by ops: it neither checks nor moves the fence.
  const manual = token === 0 && caller.role === "ops";
  if (!manual && token < f.lastFencingToken) {
    return deny("FAILED_PRECONDITION", `stale fencing token ${token}; order has seen ${f.lastFencingToken}`);
  }
  return {
    kind: "transition",
    command,
    from: f.status,
    statuses: [],
    feeMinor: 0,
    releaseDriverId: null,
    assignDriverId: driverId,
    fencingToken: manual ? undefined : token,
  };
}

/** flag_dispatch: a non-status change, like an assignment; repeating it is a noop whatever the order's state now. */
function decideFlag(caller: Caller, f: OrderFacts, rules: TransitionRule[]): Decision {
  if (ALREADY_DONE.flag_dispatch(f, { command: "flag_dispatch" }, actorRef(caller))) return { kind: "noop" };
  const allowedFrom = rules.filter((r) => r.actors.includes(caller.role)).map((r) => r.from);
  if (!allowedFrom.includes(f.status)) {
    return deny("FAILED_PRECONDITION", `order is ${f.status}; ${NAMES.flag_dispatch} requires ${listStatuses(allowedFrom)}`);
  }
  if (f.driverId !== null) {
    return deny("FAILED_PRECONDITION", `order is ${f.status} with a driver assigned; ${NAMES.flag_dispatch} requires no driver`);
  }
  return { kind: "transition", command: "flag_dispatch", from: f.status, statuses: [], feeMinor: 0, releaseDriverId: null, flagDispatch: true };
}

/** The statuses allowed from a status by any command: the table's edges. */
export function nextStatuses(s: Status): Status[] {
  return [...new Set(TRANSITIONS.filter((r) => r.from === s).flatMap((r) => r.to))];
}

// ---------------------------------------------------------------------------------------------
// Money: integer minor units; rounding half up.

/** amount * bps / 10000, rounded half up, for non-negative integers. */
export function basisPoints(amountMinor: number, bps: number): number {
  return Math.floor((amountMinor * bps + 5000) / 10000);
}

export interface Totals {
  subtotalMinor: number;
  deliveryFeeMinor: number;
  taxMinor: number;
  tipMinor: number;
  totalMinor: number;
}

/** Tax on the subtotal and the total (subtotal + delivery fee + tax + tip). */
export function computeTotals(p: { subtotalMinor: number; deliveryFeeMinor: number; tipMinor: number; taxBps: number }): Totals {
  const taxMinor = basisPoints(p.subtotalMinor, p.taxBps);
  return {
    subtotalMinor: p.subtotalMinor,
    deliveryFeeMinor: p.deliveryFeeMinor,
    taxMinor,
    tipMinor: p.tipMinor,
    totalMinor: p.subtotalMinor + p.deliveryFeeMinor + taxMinor + p.tipMinor,
  };
}
