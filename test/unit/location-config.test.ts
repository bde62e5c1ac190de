import assert from "node:assert/strict";
import { BENGALURU, ConfigError, cityAt, loadConfig, parseCities } from "../../services/platform/config.js";

const SECRET = { JWT_SECRET: "x".repeat(32) };

describe("location and tracking configuration", () => {
  it("defaults to the demo city and the documented bounds", () => {
    const c = loadConfig(SECRET);
    assert.deepEqual(c.location.cities.map((x) => x.name), ["bengaluru"]);
    assert.equal(c.location.maxAccuracyM, 100);
    assert.equal(c.location.historyRetentionDays, 30);
    assert.equal(c.tracking.heartbeatMs, 15_000);
    assert.equal(c.tracking.positionIntervalMs, 1000);
  });

  it("reads every bound from the environment", () => {
    const c = loadConfig({
      ...SECRET,
      LOCATION_MAX_ACCURACY_M: "30",
      LOCATION_MAX_SPEED_MPS: "40",
      LOCATION_HISTORY_RETENTION_DAYS: "7",
      GEOFENCE_DWELL_MS: "0",
      TRACKING_HEARTBEAT_MS: "5000",
    });
    assert.equal(c.location.maxAccuracyM, 30);
    assert.equal(c.location.maxSpeedMps, 40);
    assert.equal(c.location.historyRetentionDays, 7);
    assert.equal(c.location.geofence.dwellMs, 0);
    assert.equal(c.tracking.heartbeatMs, 5000);
  });

  it("parses cities and finds the city of a point", () => {
    const cities = parseCities(
      JSON.stringify([
        { name: "pune", centre: { lat: 18.52, lng: 73.85 }, bounds: { south: 18.4, west: 73.7, north: 18.65, east: 74.0 } },
        BENGALURU,
      ]),
    );
    assert.equal(cityAt(cities, 18.5, 73.9)?.name, "pune");
    assert.equal(cityAt(cities, 12.97, 77.59)?.name, "bengaluru");
    assert.equal(cityAt(cities, 28.6, 77.2), undefined);
  });

  it("refuses cities that cannot work, naming the problem", () => {
    const bad: [string, RegExp][] = [
      ["not json", /not valid JSON/],
      ["[]", /non-empty/],
      [JSON.stringify([{ name: "Pune!", centre: { lat: 1, lng: 1 }, bounds: { south: 0, west: 0, north: 2, east: 2 } }]), /name must be a lower-case identifier/],
      [JSON.stringify([{ name: "x", centre: { lat: 5, lng: 1 }, bounds: { south: 0, west: 0, north: 2, east: 2 } }]), /centre must lie inside/],
      [JSON.stringify([{ name: "x", centre: { lat: 1, lng: 1 }, bounds: { south: 2, west: 0, north: 0, east: 2 } }]), /south < north/],
      [JSON.stringify([{ name: "x", centre: { lat: 1, lng: 1 }, bounds: { south: 0, west: 0, north: 2 } }]), /bounds.east must be a number/],
      [JSON.stringify([BENGALURU, BENGALURU]), /listed twice/],
    ];
    for (const [raw, re] of bad) assert.throws(() => parseCities(raw), (e: Error) => e instanceof ConfigError && re.test(e.message), raw);
  });

  it("requires every geofence exit radius to exceed its enter radius (the hysteresis)", () => {
    assert.throws(
      () => loadConfig({ ...SECRET, GEOFENCE_RESTAURANT_ENTER_M: "200", GEOFENCE_RESTAURANT_EXIT_M: "150" }),
      /restaurantExitM \(150\) must be larger than restaurantEnterM \(200\)/,
    );
  });
});
