import { parseArgs } from "node:util";
import { ROLES, mintToken, type Role } from "../platform/auth.js";
import { loadConfig } from "../platform/config.js";

/** Prints a JWT for the configured secret: npm run token -- --role customer --sub c1 [--restaurant r1] [--ttl 3600]. */
const { values } = parseArgs({
  options: {
    role: { type: "string", default: "customer" },
    sub: { type: "string" },
    restaurant: { type: "string" },
    ttl: { type: "string", default: "86400" },
  },
});
const role = values.role as Role;
if (!(ROLES as readonly string[]).includes(role)) {
  console.error(`--role must be one of ${ROLES.join(", ")}`);
  process.exit(2);
}
if (role === "restaurant" && !values.restaurant) {
  console.error("restaurant tokens need --restaurant <restaurant id>");
  process.exit(2);
}
const ttl = Number(values.ttl);
if (!Number.isInteger(ttl) || ttl <= 0) {
  console.error("--ttl must be a positive number of seconds");
  process.exit(2);
}
const config = loadConfig({ ...process.env, SERVICES: "all" });
if (!config.auth.hsSecret) {
  console.error("minting needs JWT_SECRET (HS256); with a public key, mint tokens with your identity provider");
  process.exit(2);
}
const sub = values.sub ?? (role === "restaurant" ? `staff-${values.restaurant}` : `${role}-1`);
console.log(await mintToken(config.auth, { role, sub, restaurantId: values.restaurant }, ttl));
