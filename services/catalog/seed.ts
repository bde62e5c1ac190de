import type { Db } from "../platform/db.js";
import { searchText, type CategoryInfo, type GroupInfo, type Hours, type ItemInfo } from "./domain.js";
import { createCatalogStore, type CatalogStore, type NewRestaurant } from "./store.js";

/**
 * Deterministic demo city: the same seed gives byte-identical data (mulberry32 PRNG, no clock,
 * no Math.random). Ids embed the seed (`rst-<seed>-<n>`), so two seeds can share a database.
 */

export interface City {
  name: string;
  lat: number;
  lng: number;
  /** Fixed local-time offset from UTC in minutes (see domain.RestaurantInfo.utcOffsetMinutes). */
  utcOffsetMinutes: number;
  currency: string;
  /**
   * Restaurants are spread evenly by area over a disc of this radius in km. Undefined scales it
   * with the count for an even ~25 restaurants per km² (50,000 over a 25 km metro; 200 within 3 km).
   */
  spreadKm?: number;
}

/** Bengaluru-like demo city (MG Road), IST = UTC+05:30, no DST. Prices in USD to match the default order config. */
export const DEMO_CITY: City = Object.freeze({ name: "bengaluru", lat: 12.9716, lng: 77.5946, utcOffsetMinutes: 330, currency: "USD" });

/** Disc radius for n restaurants at ~25 per km², at least 3 km. */
export function spreadFor(n: number): number {
  return Math.max(3, 25 * Math.sqrt(n / 50_000));
}

/** mulberry32: tiny, fast, good enough for test data; the same seed gives the same sequence. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = () => number;
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)];
const int = (rng: Rng, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));

interface CuisineSpec {
  tag: string;
  names: readonly string[];
  /** Extra cuisine tags it often carries. */
  also: readonly string[];
  categories: Readonly<Record<string, readonly string[]>>;
  /** Typical main-dish price range in USD cents. */
  price: readonly [number, number];
}

const CUISINES: readonly CuisineSpec[] = [
  {
    tag: "biryani",
    names: ["Biryani House", "Paradise Biryani", "Biryani Junction", "Dum Biryani Co", "Royal Biryani", "Hyderabadi Biryani Point"],
    also: ["indian", "mughlai"],
    categories: {
      Biryani: ["Chicken Biryani", "Mutton Biryani", "Veg Biryani", "Egg Biryani", "Prawn Biryani", "Paneer Biryani", "Hyderabadi Dum Biryani", "Kolkata Biryani"],
      Kebabs: ["Chicken Seekh Kebab", "Mutton Shami Kebab", "Tandoori Chicken", "Chicken Tikka", "Paneer Tikka", "Reshmi Kebab"],
      Sides: ["Raita", "Mirchi Ka Salan", "Double Ka Meetha", "Onion Salad", "Papad"],
      Drinks: ["Sweet Lassi", "Masala Chaas", "Lime Soda", "Rose Milk"],
    },
    price: [900, 1900],
  },
  {
    tag: "indian",
    names: ["Spice Route", "Masala Kitchen", "Tandoor Tales", "Curry Leaf", "Dosa Corner", "Udupi Bhavan", "Punjabi Dhaba"],
    also: ["north-indian", "south-indian", "vegetarian"],
    categories: {
      Starters: ["Samosa", "Onion Bhaji", "Paneer Tikka", "Gobi Manchurian", "Chicken 65", "Aloo Tikki"],
      Mains: ["Butter Chicken", "Paneer Butter Masala", "Dal Makhani", "Chana Masala", "Palak Paneer", "Rogan Josh", "Chicken Chettinad", "Malai Kofta"],
      "Dosa & Idli": ["Masala Dosa", "Plain Dosa", "Rava Dosa", "Idli Vada", "Onion Uttapam", "Set Dosa"],
      Breads: ["Butter Naan", "Garlic Naan", "Tandoori Roti", "Lachha Paratha", "Kulcha"],
      Desserts: ["Gulab Jamun", "Rasmalai", "Gajar Halwa", "Kulfi"],
      Drinks: ["Filter Coffee", "Masala Chai", "Mango Lassi", "Buttermilk"],
    },
    price: [500, 1600],
  },
  {
    tag: "pizza",
    names: ["Napoli Pizza Co", "Slice of Brooklyn", "Pizza Piazza", "Wood Fire Pizzeria", "Crust & Co", "Pizza Express"],
    also: ["italian", "fast-food"],
    categories: {
      Pizzas: ["Margherita Pizza", "Pepperoni Pizza", "Farmhouse Pizza", "Quattro Formaggi", "Diavola Pizza", "BBQ Chicken Pizza", "Veggie Supreme Pizza", "Marinara Pizza"],
      Sides: ["Garlic Bread", "Cheesy Garlic Bread", "Potato Wedges", "Chicken Wings", "Caesar Salad"],
      Pasta: ["Penne Arrabbiata", "Spaghetti Carbonara", "Fettuccine Alfredo", "Mac and Cheese"],
      Desserts: ["Choco Lava Cake", "Tiramisu", "Brownie"],
      Drinks: ["Coke", "Lemon Iced Tea", "Sparkling Water"],
    },
    price: [900, 2200],
  },
  {
    tag: "burgers",
    names: ["Burger Barn", "Smash Burger Co", "Patty Wagon", "The Burger Joint", "Grill Masters", "Big Bite Burgers"],
    also: ["american", "fast-food"],
    categories: {
      Burgers: ["Classic Cheeseburger", "Double Smash Burger", "Crispy Chicken Burger", "Veggie Burger", "Bacon Burger", "Mushroom Swiss Burger", "Spicy Jalapeno Burger"],
      Sides: ["French Fries", "Onion Rings", "Loaded Fries", "Coleslaw", "Chicken Nuggets"],
      Shakes: ["Chocolate Shake", "Vanilla Shake", "Strawberry Shake", "Oreo Shake"],
      Drinks: ["Cola", "Lemonade", "Iced Tea"],
    },
    price: [700, 1600],
  },
  {
    tag: "sushi",
    names: ["Sakura Sushi", "Tokyo Roll", "Wasabi House", "Sushi Zen", "Koi Sushi Bar"],
    also: ["japanese", "asian"],
    categories: {
      "Sushi Rolls": ["California Roll", "Spicy Tuna Roll", "Salmon Avocado Roll", "Dragon Roll", "Rainbow Roll", "Tempura Prawn Roll", "Cucumber Maki"],
      Nigiri: ["Salmon Nigiri", "Tuna Nigiri", "Ebi Nigiri", "Tamago Nigiri"],
      Mains: ["Chicken Teriyaki", "Salmon Teriyaki", "Chicken Katsu Curry", "Tonkotsu Ramen", "Miso Ramen", "Yaki Udon"],
      Sides: ["Edamame", "Miso Soup", "Gyoza", "Seaweed Salad"],
      Drinks: ["Green Tea", "Ramune", "Iced Matcha"],
    },
    price: [1200, 2800],
  },
  {
    tag: "chinese",
    names: ["Golden Dragon", "Wok Express", "Mainland China", "Chopsticks", "Beijing Bites", "Red Lantern"],
    also: ["asian", "indo-chinese"],
    categories: {
      Starters: ["Spring Rolls", "Chilli Chicken", "Crispy Corn", "Dim Sum Basket", "Honey Chilli Potato", "Salt and Pepper Squid"],
      Mains: ["Kung Pao Chicken", "Sweet and Sour Pork", "Mapo Tofu", "Hakka Noodles", "Schezwan Fried Rice", "Chicken Manchurian", "Beef Chow Fun"],
      Soups: ["Hot and Sour Soup", "Manchow Soup", "Wonton Soup", "Sweet Corn Soup"],
      Drinks: ["Jasmine Tea", "Lychee Cooler"],
    },
    price: [700, 1800],
  },
  {
    tag: "thai",
    names: ["Bangkok Street", "Thai Orchid", "Lemongrass", "Siam Kitchen", "Baan Thai"],
    also: ["asian"],
    categories: {
      Starters: ["Chicken Satay", "Thai Fish Cakes", "Som Tam Papaya Salad", "Tom Yum Soup", "Tom Kha Gai"],
      Curries: ["Thai Green Curry", "Thai Red Curry", "Massaman Curry", "Panang Curry", "Yellow Curry"],
      Noodles: ["Pad Thai", "Pad See Ew", "Drunken Noodles", "Khao Soi"],
      Desserts: ["Mango Sticky Rice", "Coconut Ice Cream"],
      Drinks: ["Thai Iced Tea", "Coconut Water"],
    },
    price: [900, 2000],
  },
  {
    tag: "mexican",
    names: ["Taco Loco", "El Burrito", "Casa Mexicana", "Salsa Verde", "La Cantina"],
    also: ["latin", "fast-food"],
    categories: {
      Tacos: ["Chicken Tacos", "Carnitas Tacos", "Fish Tacos", "Al Pastor Tacos", "Veggie Tacos"],
      Burritos: ["Chicken Burrito", "Beef Burrito", "Bean and Cheese Burrito", "Burrito Bowl"],
      Sides: ["Nachos", "Guacamole and Chips", "Quesadilla", "Mexican Rice", "Elote"],
      Desserts: ["Churros", "Tres Leches"],
      Drinks: ["Horchata", "Agua Fresca"],
    },
    price: [800, 1700],
  },
  {
    tag: "italian",
    names: ["Trattoria Roma", "La Dolce Vita", "Osteria Milano", "Pasta Fresca", "Little Italy"],
    also: ["european", "pizza"],
    categories: {
      Antipasti: ["Bruschetta", "Caprese Salad", "Arancini", "Minestrone"],
      Pasta: ["Spaghetti Bolognese", "Lasagna", "Penne Alla Vodka", "Ravioli", "Gnocchi Pesto", "Linguine Vongole"],
      Mains: ["Chicken Parmigiana", "Risotto Funghi", "Margherita Pizza", "Osso Buco"],
      Desserts: ["Tiramisu", "Panna Cotta", "Cannoli", "Gelato"],
      Drinks: ["Espresso", "San Pellegrino"],
    },
    price: [1100, 2600],
  },
  {
    tag: "vegan",
    names: ["Green Bowl", "Plant Power", "Sprout Kitchen", "The Vegan Table", "Leaf & Grain"],
    also: ["healthy", "salads"],
    categories: {
      Bowls: ["Buddha Bowl", "Quinoa Power Bowl", "Falafel Bowl", "Poke Bowl Tofu", "Acai Bowl"],
      Salads: ["Kale Caesar", "Mediterranean Salad", "Thai Peanut Salad"],
      Mains: ["Vegan Burger", "Jackfruit Tacos", "Lentil Curry", "Zucchini Noodles"],
      Drinks: ["Green Smoothie", "Cold Pressed Juice", "Kombucha"],
    },
    price: [800, 1800],
  },
  {
    tag: "desserts",
    names: ["Sugar Rush", "Sweet Tooth", "Cake Walk", "The Dessert Bar", "Frozen Bottle", "Waffle House"],
    also: ["bakery", "ice-cream"],
    categories: {
      Cakes: ["Chocolate Truffle Cake", "Red Velvet Cake", "Cheesecake", "Black Forest Cake", "Carrot Cake"],
      "Ice Cream": ["Belgian Chocolate Ice Cream", "Vanilla Bean Ice Cream", "Mango Sorbet", "Sundae"],
      Waffles: ["Nutella Waffle", "Classic Waffle", "Red Velvet Waffle"],
      Drinks: ["Hot Chocolate", "Cold Coffee", "Milkshake"],
    },
    price: [300, 900],
  },
  {
    tag: "cafe",
    names: ["Third Wave Cafe", "Brew & Bake", "Blue Tokai", "Corner Cafe", "Daily Grind"],
    also: ["breakfast", "bakery"],
    categories: {
      Coffee: ["Cappuccino", "Latte", "Americano", "Cold Brew", "Flat White", "Mocha"],
      Breakfast: ["Eggs Benedict", "Avocado Toast", "Pancakes", "English Breakfast", "Croissant"],
      Sandwiches: ["Club Sandwich", "Grilled Cheese", "Chicken Pesto Sandwich", "Veg Panini"],
      Bakes: ["Banana Bread", "Blueberry Muffin", "Chocolate Chip Cookie"],
    },
    price: [300, 1200],
  },
];

const STREETS = ["MG Road", "Brigade Road", "Church Street", "Indiranagar 100 Ft Road", "Koramangala 5th Block", "HSR Layout", "Jayanagar 4th Block", "Whitefield Main Road", "Malleshwaram 8th Cross", "JP Nagar", "Residency Road", "Lavelle Road"];
const BRANCHES = ["", "", "", " Express", " Kitchen", " & Grill", " Cafe"];
const DESCRIPTIONS = ["Freshly made, every day.", "A neighbourhood favourite.", "Family recipes since 1998.", "Fast, hot and generous portions.", "Cooked to order from local produce."];
const SIZES: Array<[string, number]> = [["Regular", 0], ["Medium", 150], ["Large", 300]];
const EXTRAS: Array<[string, number]> = [["Extra cheese", 99], ["Extra sauce", 49], ["Add egg", 79], ["Add avocado", 149], ["Jalapenos", 59], ["Extra toppings", 129], ["Spicy", 0]];

export interface GenerateOptions {
  seed: number;
  /** Size of the whole city (sets the spread when the city has none). */
  restaurants: number;
  city?: City;
  /** Index of the first restaurant to generate (for generating a city in chunks); default 0. */
  start?: number;
  /** How many to generate from start; default all the rest. */
  count?: number;
}

/** Generates restaurants [start, start+count) of a city; each depends only on (seed, city size, index). */
export function generateRestaurants(opts: GenerateOptions): NewRestaurant[] {
  const city = opts.city ?? DEMO_CITY;
  const spreadKm = city.spreadKm ?? spreadFor(opts.restaurants);
  const start = opts.start ?? 0;
  const end = Math.min(opts.restaurants, start + (opts.count ?? opts.restaurants));
  const out: NewRestaurant[] = [];
  for (let i = start; i < end; i++) out.push(generateRestaurant(opts.seed, i, city, spreadKm));
  return out;
}

function generateRestaurant(seed: number, index: number, city: City, spreadKm: number): NewRestaurant {
  // Per-restaurant stream: chunked generation gives the same data as one pass.
  const rng = mulberry32(hash32(seed, index));
  const spec = pick(rng, CUISINES);
  const id = `rst-${seed}-${index}`;
  const name = pick(rng, spec.names) + pick(rng, BRANCHES);

  // Location: uniform over the disc (sqrt of a uniform distance), so density is even.
  const bearing = rng() * 2 * Math.PI;
  const distKm = spreadKm * Math.sqrt(rng());
  const lat = city.lat + (distKm / 111.32) * Math.cos(bearing);
  const lng = city.lng + (distKm / (111.32 * Math.cos((city.lat * Math.PI) / 180))) * Math.sin(bearing);

  const cuisines = [spec.tag];
  for (const extra of spec.also) if (rng() < 0.5) cuisines.push(extra);

  const categories: CategoryInfo[] = [];
  const targetItems = int(rng, 20, 60);
  const catNames = Object.keys(spec.categories);
  let itemNo = 0;
  // Round-robin over categories until the menu reaches its size; repeats get a variant name.
  const perCat = new Map<string, ItemInfo[]>();
  for (let round = 0; itemNo < targetItems; round++) {
    for (const cat of catNames) {
      if (itemNo >= targetItems) break;
      const dishes = spec.categories[cat];
      const dish = dishes[(round + int(rng, 0, dishes.length - 1)) % dishes.length];
      const variant = round === 0 ? "" : pick(rng, [" (Family Pack)", " Special", " Combo", " Jumbo", " Mini", " Classic", " Deluxe"]);
      const itemId = `${id}-i${itemNo}`;
      const isMain = cat !== "Drinks" && cat !== "Sides" && cat !== "Desserts";
      const [lo, hi] = spec.price;
      const base = isMain ? int(rng, lo, hi) : int(rng, Math.round(lo * 0.3), Math.round(lo * 0.8));
      const priceMinor = Math.round(base / 10) * 10 - 1;
      const groups: GroupInfo[] = [];
      if (isMain && rng() < 0.3) {
        groups.push({
          id: `${itemId}-g0`,
          name: "Size",
          minChoices: 1,
          maxChoices: 1,
          options: SIZES.map(([n, p], j) => ({ id: `${itemId}-g0-o${j}`, name: n, priceDeltaMinor: p, available: true })),
        });
      }
      if (isMain && rng() < 0.25) {
        const g = groups.length;
        const count = int(rng, 2, 4);
        const startAt = int(rng, 0, EXTRAS.length - 1);
        groups.push({
          id: `${itemId}-g${g}`,
          name: "Extras",
          minChoices: 0,
          maxChoices: Math.min(3, count),
          options: Array.from({ length: count }, (_, j) => {
            const [n, p] = EXTRAS[(startAt + j) % EXTRAS.length];
            return { id: `${itemId}-g${g}-o${j}`, name: n, priceDeltaMinor: p, available: rng() > 0.05 };
          }),
        });
      }
      const item: ItemInfo = {
        id: itemId,
        restaurantId: id,
        categoryId: `${id}-c${catNames.indexOf(cat)}`,
        name: dish + variant,
        description: `${dish} made the ${name} way.`,
        priceMinor,
        currency: city.currency,
        available: rng() > 0.04,
        groups,
      };
      const list = perCat.get(cat) ?? [];
      list.push(item);
      perCat.set(cat, list);
      itemNo++;
    }
  }
  catNames.forEach((cat, ci) => {
    const items = perCat.get(cat);
    if (items) categories.push({ id: `${id}-c${ci}`, name: cat, items });
  });

  // Hours: lunch and dinner every day; some close past midnight; some cafes open all day.
  const hours: Hours[] = [];
  const lateNight = rng() < 0.25;
  const allDay = rng() < 0.15;
  const closedDay = rng() < 0.3 ? int(rng, 0, 6) : -1;
  for (let d = 0; d < 7; d++) {
    if (d === closedDay) continue;
    if (allDay) hours.push({ dayOfWeek: d, openMinute: 8 * 60, closeMinute: 23 * 60 });
    else {
      hours.push({ dayOfWeek: d, openMinute: 11 * 60 + 30 * int(rng, 0, 1), closeMinute: 15 * 60 + 30 * int(rng, 0, 1) });
      hours.push({ dayOfWeek: d, openMinute: 18 * 60 + 30 * int(rng, 0, 2), closeMinute: lateNight ? 24 * 60 + 60 * int(rng, 1, 3) : 22 * 60 + 30 * int(rng, 0, 3) });
    }
  }

  const dishNames = categories.flatMap((c) => c.items.map((it) => it.name));
  return {
    id,
    name,
    description: pick(rng, DESCRIPTIONS),
    lat: round6(lat),
    lng: round6(lng),
    address: `${int(rng, 1, 400)}, ${pick(rng, STREETS)}, ${city.name}`,
    cuisines,
    rating: Math.round((3 + rng() * 2) * 10) / 10,
    ratingCount: int(rng, 5, 5000),
    priceLevel: int(rng, 1, 4),
    hours,
    isOpen: rng() > 0.05,
    deliveryRadiusKm: int(rng, 6, 16) / 2,
    avgPrepMinutes: int(rng, 10, 35),
    popularity: Math.round(rng() ** 2 * 1000) / 1000,
    currency: city.currency,
    city: city.name,
    utcOffsetMinutes: city.utcOffsetMinutes,
    categories,
    searchText: searchText(name, cuisines, dishNames),
  };
}

export interface SeedSummary {
  seed: number;
  city: string;
  restaurants: number;
  categories: number;
  items: number;
  groups: number;
  options: number;
  seconds: number;
}

export interface SeedOptions {
  seed: number;
  restaurants: number;
  city?: City;
  /** Restaurants generated and written per transaction. */
  batch?: number;
  /** Called after each batch with restaurants written so far and the total. */
  onProgress?: (done: number, total: number) => void;
  store?: CatalogStore;
}

/** Generates and writes a city (catalog migrations must have run). Not idempotent: use a fresh seed or delete first. */
export async function seedCity(db: Db, opts: SeedOptions): Promise<SeedSummary> {
  const started = performance.now();
  const store = opts.store ?? createCatalogStore(db);
  const batch = opts.batch ?? 250;
  const sum: SeedSummary = { seed: opts.seed, city: (opts.city ?? DEMO_CITY).name, restaurants: 0, categories: 0, items: 0, groups: 0, options: 0, seconds: 0 };
  for (let start = 0; start < opts.restaurants; start += batch) {
    const rs = generateRestaurants({ seed: opts.seed, restaurants: opts.restaurants, start, count: batch, city: opts.city });
    const c = await store.insertRestaurants(rs);
    sum.restaurants += c.restaurants;
    sum.categories += c.categories;
    sum.items += c.items;
    sum.groups += c.groups;
    sum.options += c.options;
    opts.onProgress?.(sum.restaurants, opts.restaurants);
  }
  await store.analyze();
  sum.seconds = Math.round((performance.now() - started) / 10) / 100;
  return sum;
}

function hash32(seed: number, index: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ index, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
