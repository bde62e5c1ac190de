import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { AnswerPolicy } from "../../../gen/dabba/catalog/v1/catalog_pb.js";
import {
  SetAnswerPolicyResponseSchema,
  type SetAnswerPolicyRequest,
  type SetAnswerPolicyResponse,
} from "../../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { NotFoundError, invalid } from "../../platform/errors.js";
import { ANSWER_TIMEOUT_S, type AnswerPolicyName } from "../domain.js";
import { requireRestaurantOwner } from "./owner.js";
import { restaurantProto, type HandlerDeps } from "./proto.js";
import { requireId } from "./validate.js";

const POLICIES: Partial<Record<AnswerPolicy, AnswerPolicyName>> = {
  [AnswerPolicy.AUTO_CONFIRM]: "auto_confirm",
  [AnswerPolicy.AUTO_REJECT]: "auto_reject",
};

/** SetAnswerPolicy: what happens to the restaurant's orders it does not answer in time. The restaurant (its own), ops. */
export function setAnswerPolicy(deps: HandlerDeps) {
  return async (req: SetAnswerPolicyRequest, ctx: HandlerContext): Promise<SetAnswerPolicyResponse> => {
    const restaurantId = requireId("restaurant_id", req.restaurantId);
    requireRestaurantOwner(ctx, restaurantId);
    let policy: AnswerPolicyName | undefined;
    if (req.answerPolicy !== AnswerPolicy.UNSPECIFIED) {
      policy = POLICIES[req.answerPolicy];
      if (!policy) throw invalid("answer_policy", "must be ANSWER_POLICY_AUTO_CONFIRM, ANSWER_POLICY_AUTO_REJECT or unspecified");
    }
    const t = req.answerTimeoutSeconds;
    if (t !== 0 && (!Number.isInteger(t) || t < ANSWER_TIMEOUT_S.min || t > ANSWER_TIMEOUT_S.max)) {
      throw invalid("answer_timeout_seconds", `must be 0 (platform default) or ${ANSWER_TIMEOUT_S.min} to ${ANSWER_TIMEOUT_S.max}`);
    }
    const r = await deps.store.setAnswerPolicy(restaurantId, policy, t === 0 ? undefined : t);
    if (!r) throw new NotFoundError(`restaurant ${restaurantId} not found`);
    deps.logger.info({ restaurantId, policy: policy ?? "default", timeoutS: t || "default" }, "restaurant answer policy changed");
    return create(SetAnswerPolicyResponseSchema, { restaurant: restaurantProto(r, deps.now()) });
  };
}
