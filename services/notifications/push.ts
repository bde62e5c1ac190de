import type { Logger } from "../platform/logger.js";

/**
 * The push-provider port, shaped like an FCM v1 / APNs send: one device or topic address, a
 * visible notification (title, body) and flat string data for the app. Push is best effort: the
 * inbox row is the durable record, and a push is sent only for a newly inserted inbox row (a
 * redelivered event sends nothing).
 */
export interface PushMessage {
  /** Where it goes: the recipient's topic, "<kind>:<id>" (customer:c-1, restaurant:r-1, driver:d-1); an adapter maps it to device tokens. */
  token: string;
  notification: { title: string; body: string };
  /** Custom data: kind, order_id, event_id, notification_id. */
  data: Record<string, string>;
}

export interface PushProvider {
  send(msg: PushMessage): Promise<void>;
}

/** The default adapter: records what would be sent (bounded, oldest dropped) and logs it at debug. */
export interface RecordingPush extends PushProvider {
  /** Messages sent so far, oldest first. */
  readonly sent: readonly PushMessage[];
  /** Messages sent to one address. */
  sentTo(token: string): PushMessage[];
  clear(): void;
}

export function createRecordingPush(opts: { logger?: Logger; capacity?: number } = {}): RecordingPush {
  const capacity = opts.capacity ?? 10_000;
  const sent: PushMessage[] = [];
  return {
    sent,
    async send(msg) {
      sent.push(msg);
      if (sent.length > capacity) sent.splice(0, sent.length - capacity);
      opts.logger?.debug({ push: msg }, "push (recorded, not sent)");
    },
    sentTo: (token) => sent.filter((m) => m.token === token),
    clear() {
      sent.length = 0;
    },
  };
}
