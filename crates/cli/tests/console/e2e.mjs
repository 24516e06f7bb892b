// The web console end to end, in Debian's headless Chromium driven by playwright-core
// (never a downloaded browser). Run by crates/cli/tests/console.rs, which starts
// `dynreg serve` and registers the device when asked:
//   this script prints `REGISTER <pid> <secret> <barcode>` and reads `REGISTERED <uuid>`.
// Environment: BASE_URL, ADMIN_TOKEN, READ_TOKEN, CHROMIUM, SHOTS (where screenshots go).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";

const { BASE_URL, ADMIN_TOKEN, READ_TOKEN, CHROMIUM, SHOTS } = process.env;
const lines = createInterface({ input: process.stdin });
const replies = [];
let waiting = null;
lines.on("line", (l) => { if (waiting) { const w = waiting; waiting = null; w(l); } else replies.push(l); });
const nextLine = () => new Promise((resolve) => { if (replies.length) resolve(replies.shift()); else waiting = resolve; });

const step = (s) => console.log(`STEP ${s}`);
const fail = (why) => { throw new Error(why); };
const errors = [];

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE_URL });
  const page = await context.newPage();
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e.message}`));
  // Script errors fail the test. The browser also logs every answer of 400 or more
  // as an error; those the test provokes on purpose (a wrong token, a bad CSV, a
  // POST without a token) are answers, not script errors, but a missing page or
  // asset (404) is a defect.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(`${page.url()}: ${m.text()}`);
  });
  page.on("response", (r) => { if (r.status() === 404) errors.push(`404: ${r.url()}`); });
  page.on("dialog", (d) => d.accept());

  // Every page: labelled controls, no horizontal scrolling, a screenshot.
  const check = async (name, { shot = true } = {}) => {
    const unlabelled = await page.evaluate(() =>
      [...document.querySelectorAll("input:not([type=hidden]), select, textarea, button")]
        .filter((el) => el.tagName === "BUTTON"
          ? !el.textContent.trim() && !el.getAttribute("aria-label")
          : !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
        .map((el) => el.outerHTML));
    if (unlabelled.length) fail(`${name}: controls without a label: ${unlabelled.join(", ")}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    if (overflow > 0) fail(`${name}: scrolls ${overflow}px horizontally at ${page.viewportSize().width}px`);
    if (shot) await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
  };
  const signIn = async (token) => {
    await page.goto(`${BASE_URL}/`);
    if (!page.url().includes("/sign-in")) fail(`not sent to sign in: ${page.url()}`);
    await page.getByLabel("API token").fill(token);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${BASE_URL}/`);
  };

  // 1. Sign in (a wrong token is refused; the skip link is the first stop of Tab).
  step("sign in");
  await page.goto(`${BASE_URL}/`);
  await page.getByLabel("API token").fill("dynreg_not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("unknown or revoked").waitFor();
  await check("sign-in");
  await signIn(ADMIN_TOKEN);
  // Keyboard: the first Tab reaches the skip link, visibly focused.
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => [document.activeElement.className, getComputedStyle(document.activeElement).outlineStyle]);
  if (focused[0] !== "skip" || focused[1] === "none") fail(`Tab did not reach a visible skip link first: ${focused}`);
  const cookie = (await context.cookies()).find((c) => c.name === "dynreg_session");
  if (!cookie || !cookie.httpOnly || cookie.sameSite !== "Strict") fail(`session cookie: ${JSON.stringify(cookie)}`);

  // 2. Create a product and copy its secret.
  step("create a product");
  await page.getByRole("link", { name: "Products" }).click();
  await page.getByLabel("Name", { exact: true }).fill("Lamp");
  await page.getByLabel("Product id (empty: generated)").fill("lamp");
  await page.getByLabel("Where triplets come from").selectOption("pool");
  await page.getByLabel("Low-water mark of free triplets").fill("5");
  await page.getByRole("button", { name: "Create product" }).click();
  await page.getByRole("heading", { name: "Product created" }).waitFor();
  const secret = await page.getByLabel("Secret (shown only now)").inputValue();
  if (secret.length !== 32) fail(`secret: ${secret}`);
  await page.getByRole("button", { name: "Copy" }).click();
  await page.getByText("Copied.").waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  if (copied !== secret) fail(`the clipboard holds ${copied}, not the secret`);
  await check("product-created");
  await page.getByRole("link", { name: "Done" }).click();

  // 3. Generate a pool (the CSV downloads), and import a CSV with a bad line, then a good one.
  step("generate a pool");
  await page.getByLabel("How many").fill("20");
  await page.getByLabel("Barcode prefix").fill("LAMP-");
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.getByRole("button", { name: "Generate and download CSV" }).click(),
  ]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  if (csv[0] !== "uuid,secret,mac,barcode" || csv.length !== 21) fail(`generated CSV: ${csv.length} lines, ${csv[0]}`);
  await page.reload();
  if ((await page.locator("#pool-free").textContent()) !== "20") fail("the pool does not show 20 free triplets");
  step("import");
  const upload = async (name, text) => {
    await page.getByLabel("Factory CSV (uuid,secret,mac,barcode)").setInputFiles({ name, mimeType: "text/csv", buffer: Buffer.from(text) });
    await page.getByRole("button", { name: "Import" }).click();
  };
  await upload("bad.csv", "uuid,secret,mac,barcode\nimp1aaaaaaaaaaaaaaaa,s1secretsecretsecret,,IMP-1\n,missing-uuid,,IMP-2\n");
  await page.getByText(/Nothing written: the CSV line 3: uuid and secret must not be empty/).waitFor();
  await upload("good.csv", "uuid,secret,mac,barcode\nimp1aaaaaaaaaaaaaaaa,s1secretsecretsecret,,IMP-1\nimp2aaaaaaaaaaaaaaaa,s2secretsecretsecret,,IMP-2\n");
  await page.getByText("2 triplets imported.").waitFor();
  await check("product");

  // 3b. Expected devices: a bad line is named and nothing is listed; then two are.
  step("expected devices");
  await page.getByRole("link", { name: "Expected devices" }).click();
  const expect = async (name, text) => {
    await page.getByLabel("Expected devices CSV (unique[,barcode[,mac]])").setInputFiles({ name, mimeType: "text/csv", buffer: Buffer.from(text) });
    await page.getByRole("button", { name: "Upload" }).click();
  };
  await expect("bad.csv", "unique,barcode\nexp1,EXP-1\nexp_2,EXP-2\n");
  await page.getByText(/Nothing written: the CSV line 3: unique `exp_2` must be/).waitFor();
  await expect("good.csv", "unique,barcode\nexp1,EXP-1\nexp2,EXP-2\n");
  await page.getByText("2 devices listed.").waitFor();
  await page.reload();
  await page.getByRole("cell", { name: "exp2", exact: true }).waitFor();
  await check("expected");
  await page.getByRole("button", { name: "Remove exp2" }).click();
  await page.getByText("exp2 removed from the list.").waitFor();
  await page.getByRole("link", { name: "lamp" }).click();

  // 4. A device registers through the SDK; the dashboard shows it without a reload.
  step("live registration");
  await page.getByRole("link", { name: "Dashboard" }).click();
  await page.waitForFunction(() => document.querySelector("#latest") !== null);
  await page.waitForTimeout(500); // the event stream is open
  console.log(`REGISTER lamp ${secret} LAMP-E2E-0001`);
  const reply = await nextLine();
  if (!reply.startsWith("REGISTERED ")) fail(`registration: ${reply}`);
  const uuid = reply.split(" ")[1];
  await page.locator("#latest code", { hasText: uuid }).waitFor({ timeout: 10000 });
  if (Number(await page.locator("#rate-total").textContent()) < 1) fail("the chart counted no registration");
  await check("dashboard");

  // 5. Find the device by barcode, and revoke it (after the confirmation).
  step("find and revoke");
  await page.getByRole("link", { name: "Devices" }).click();
  await page.getByLabel("Find by").selectOption("barcode");
  await page.getByLabel("Search").fill("LAMP-E2E-0001");
  await page.getByRole("button", { name: "Search" }).click();
  await page.locator("#devices code", { hasText: uuid }).waitFor();
  await check("devices");
  await page.locator("#devices a").first().click();
  await page.getByRole("button", { name: "Revoke" }).click();
  await page.getByText("Revoked.").waitFor();
  if ((await page.locator("#device-state").textContent()) !== "revoked") fail("the device is not revoked");
  await check("device");
  await page.getByRole("link", { name: "Audit log" }).click();
  await page.getByRole("cell", { name: "device.revoked" }).first().waitFor();
  await check("audit");
  await page.getByRole("link", { name: "Tokens" }).click();
  await check("tokens");
  const devicePath = "/devices/lamp/console-lamp-1";

  // The phone width: nothing scrolls sideways.
  step("390 px");
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [path, name] of [["/", "phone-dashboard"], ["/products/lamp", null], ["/devices?by=barcode&q=LAMP-E2E-0001", "phone-devices"], [devicePath, null], ["/audit", null], ["/tokens", null]]) {
    await page.goto(`${BASE_URL}${path}`);
    await check(name || `phone${path.replace(/\W+/g, "-")}`, { shot: Boolean(name) });
  }
  await page.setViewportSize({ width: 1280, height: 800 });

  // 6. A read token sees no button it cannot use, and cannot revoke (or reset) anyway.
  step("read token");
  await page.goto(`${BASE_URL}/`);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(/\/sign-in/);
  await signIn(READ_TOKEN);
  if (await page.getByRole("link", { name: "Tokens" }).count()) fail("a read token sees the tokens page");
  await page.goto(`${BASE_URL}${devicePath}`);
  const buttons = await page.locator("main button").count();
  if (buttons) fail(`a read token sees ${buttons} buttons on the device page`);
  await page.goto(`${BASE_URL}/products/lamp`);
  if (await page.locator("main form[method=post]").count()) fail("a read token sees forms on the product page");
  if (await page.locator("main button").count()) fail("a read token sees buttons on the product page");
  const csrf = await page.locator("form.signout input[name=csrf]").inputValue();
  const forged = await page.evaluate(async ([path, csrf]) => {
    const r = await fetch(`${path}/reset`, { method: "POST", headers: { "content-type": "application/x-www-form-urlencoded" }, body: `csrf=${csrf}` });
    return await r.text();
  }, [devicePath, csrf]);
  if (!forged.includes("this needs write")) fail("a read token's reset was not refused for its scope");
  await page.goto(`${BASE_URL}${devicePath}`);
  if ((await page.locator("#device-state").textContent()) !== "revoked") fail("a read token changed the device");
  const refused = await page.evaluate(async (path) => (await fetch(`/api/v1${path}/reset`, { method: "POST" })).status, devicePath);
  if (refused !== 401) fail(`the API took a POST with only the session cookie: ${refused}`);
  await check("read-only-product");

  if (errors.length) fail(`JavaScript errors: ${errors.join("; ")}`);
  console.log("OK");
} finally {
  await browser.close();
  lines.close();
}
