import type { NotificationsConfig } from "../platform/config.js";
import type { JobQueue } from "../platform/jobs.js";
import type { Logger } from "../platform/logger.js";
import type { NotificationsStore } from "./store.js";
import type { WebhookJob } from "./webhooks.js";

/** What the inbox and webhook RPC handlers (services/tracking/handlers) need. */
export interface NotificationHandlerDeps {
  store: NotificationsStore;
  queue: JobQueue<WebhookJob>;
  config: NotificationsConfig;
  logger: Logger;
}
