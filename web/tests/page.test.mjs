// Browser tests of the page, in Debian's Chromium driven by playwright-core, against a live
// md5-api with a real worker (scripts/browser-test.sh starts them and sets MD5_BASE_URL).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.MD5_BASE_URL;
const LIMIT = Number(process.env.MD5_MAX_UPLOAD_BYTES);
const SHOTS = process.env.SCREENSHOT_DIR || 'test-results';
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let browser;
let context;
let page;
// Every Content-Security-Policy violation any page reports: the page and Swagger UI must work
// under the api's policy without one.
const cspViolations = [];

function watchCsp(target) {
  target.on('console', (message) => {
    if (/Content Security Policy/i.test(message.text())) cspViolations.push(`${target.url()}: ${message.text()}`);
  });
  return target;
}
let uploadedId;
const content = randomBytes(512 * 1024);
const expectedMd5 = createHash('md5').update(content).digest('hex');

before(async () => {
  assert.ok(BASE, 'MD5_BASE_URL must name a running md5-api: run scripts/browser-test.sh');
  assert.ok(LIMIT > 0, 'MD5_MAX_UPLOAD_BYTES must be the api\'s limit');
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: FLAGS });
  context = await browser.newContext({ viewport: { width: 1000, height: 820 } });
  page = watchCsp(await context.newPage());
});

after(async () => {
  await browser?.close();
});

test('uploading a file through the file input shows its MD5', async () => {
  await page.goto(BASE);
  await page.screenshot({ path: `${SHOTS}/idle.png` });
  await page.getByLabel('Choose one or more files').setInputFiles({
    name: 'report.bin', mimeType: 'application/octet-stream', buffer: content,
  });
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.locator('.task').first().waitFor();
  await page.screenshot({ path: `${SHOTS}/uploading.png` });
  const md5 = page.locator('.task .md5').first();
  await md5.waitFor({ timeout: 30000 });
  assert.equal(await md5.textContent(), expectedMd5);
  assert.match(await page.locator('.task .status').first().textContent(), /done/);
  uploadedId = await page.locator('.task').first().getAttribute('data-task-id');
  assert.match(uploadedId, /^[0-9a-f-]{36}$/);
  await page.screenshot({ path: `${SHOTS}/done.png` });
});

test('the page offers every algorithm of the service\'s registry, and has an icon', async () => {
  const tab = watchCsp(await context.newPage());
  await tab.goto(BASE);
  const registry = await (await fetch(`${BASE}/assets/algorithms.json`)).json();
  const offered = registry.filter(({ name }) => name !== 'md5');
  assert.ok(offered.length >= 6, JSON.stringify(registry));
  await tab.locator('#digest-choice input').nth(offered.length - 1).waitFor();
  const boxes = await tab.locator('#digest-choice input').evaluateAll((inputs) => inputs.map((box) => box.value));
  assert.deepEqual(boxes, offered.map(({ name }) => name));
  for (const { label } of offered) assert.equal(await tab.getByLabel(label, { exact: true }).count(), 1, label);
  const icon = await fetch(`${BASE}/favicon.ico`);
  assert.equal(icon.status, 200);
  assert.match(icon.headers.get('content-type'), /^image\//);
  await tab.close();
});

test('ticked digests are computed and each is shown with a copy button', async () => {
  const tab = watchCsp(await context.newPage());
  await tab.goto(BASE);
  await tab.getByLabel('SHA-256').check();
  await tab.getByLabel('BLAKE3').check();
  const bytes = randomBytes(70 * 1024);
  await tab.getByLabel('Choose one or more files').setInputFiles({
    name: 'digests.bin', mimeType: 'application/octet-stream', buffer: bytes,
  });
  await tab.getByRole('button', { name: 'Upload' }).click();
  const sha256 = tab.locator('.task .digest[data-algorithm="sha-256"]').first();
  await sha256.waitFor({ timeout: 30000 });
  assert.equal(await sha256.textContent(), createHash('sha256').update(bytes).digest('hex'));
  assert.equal(await tab.locator('.task .md5').first().textContent(), createHash('md5').update(bytes).digest('hex'));
  assert.match(await tab.locator('.task .digest[data-algorithm="blake3"]').first().textContent(), /^[0-9a-f]{64}$/);
  assert.equal(await tab.locator('.task .digest').count(), 2, 'the ticked ones, no more');
  await tab.getByRole('button', { name: 'Copy SHA-256' }).waitFor();
  await tab.screenshot({ path: `${SHOTS}/digests.png` });
  await tab.close();
});

test('looking the task up by id in a fresh browser shows the same result', async () => {
  const fresh = await browser.newContext();
  const other = watchCsp(await fresh.newPage());
  await other.goto(BASE);
  assert.equal(await other.locator('.task').count(), 0, 'a new browser shows no one else\'s tasks');
  await other.getByLabel('Promise id').fill(uploadedId);
  await other.getByRole('button', { name: 'Look up' }).click();
  const md5 = other.locator('.task .md5').first();
  await md5.waitFor({ timeout: 10000 });
  assert.equal(await md5.textContent(), expectedMd5);
  await fresh.close();
});

test('an unknown id says not found plainly', async () => {
  await page.getByLabel('Promise id').fill(randomUUID());
  await page.getByRole('button', { name: 'Look up' }).click();
  await page.locator('#lookup-message', { hasText: 'Not found' }).waitFor({ timeout: 10000 });
});

test('a file above the limit shows the size error with the limit', async () => {
  await page.getByLabel('Choose one or more files').setInputFiles({
    name: 'too-big.bin', mimeType: 'application/octet-stream', buffer: Buffer.alloc(LIMIT + 1, 1),
  });
  await page.getByRole('button', { name: 'Upload' }).click();
  const error = page.locator('.task .error', { hasText: 'too large' }).first();
  await error.waitFor({ timeout: 15000 });
  assert.match(await error.textContent(), new RegExp(String(LIMIT)));
});

test('the recent list survives a reload', async () => {
  await page.reload();
  const card = page.locator(`.task[data-task-id="${uploadedId}"]`);
  await card.locator('.md5').waitFor({ timeout: 10000 });
  assert.equal(await card.locator('.md5').textContent(), expectedMd5);
});

test('the page works with the keyboard alone and fits a phone screen', async () => {
  const phone = await browser.newContext({ viewport: { width: 375, height: 740 } });
  const small = watchCsp(await phone.newPage());
  await small.goto(BASE);
  const width = await small.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `no horizontal scrolling on a phone (${width}px)`);
  // Tab to the lookup field (past the file input, the six digest boxes and Upload), type an
  // id, press Enter.
  await small.locator('#digest-choice input').nth(5).waitFor();
  for (let i = 0; i < 9; i += 1) await small.keyboard.press('Tab');
  assert.equal(await small.evaluate(() => document.activeElement.id), 'lookup-input');
  await small.keyboard.type(uploadedId);
  await small.keyboard.press('Enter');
  await small.locator('.task .md5').first().waitFor({ timeout: 10000 });
  await small.screenshot({ path: `${SHOTS}/phone.png` });
  await phone.close();
});

test('/docs renders Swagger UI with the network cut off', async () => {
  const offline = await browser.newContext();
  const origin = new URL(BASE).origin;
  const blocked = [];
  await offline.route('**/*', (route) => {
    if (route.request().url().startsWith(origin)) return route.continue();
    blocked.push(route.request().url());
    return route.abort();
  });
  const docs = watchCsp(await offline.newPage());
  await docs.goto(`${BASE}/docs/`);
  await docs.locator('.swagger-ui .info .title', { hasText: 'MD5 service' }).waitFor({ timeout: 15000 });
  await docs.locator('.opblock-summary-path', { hasText: '/api/v1/hashes' }).first().waitFor();
  await docs.screenshot({ path: `${SHOTS}/docs.png` });
  assert.deepEqual(blocked, [], 'the docs asked for nothing outside the service');
  await offline.close();
});

test('another site cannot frame the page', async () => {
  const framing = await browser.newContext();
  const outer = await framing.newPage();
  await outer.setContent(`<iframe id="f" src="${BASE}/"></iframe>`);
  const frame = await (await outer.waitForSelector('#f')).contentFrame();
  await outer.waitForTimeout(0);
  await frame.waitForLoadState().catch(() => {});
  assert.equal(await frame.locator('h1', { hasText: 'MD5 service' }).count(), 0, 'the page refuses to render in a frame');
  await framing.close();
});

test('the page follows a task through its event stream, not by polling', async () => {
  const own = await browser.newContext();
  const tab = watchCsp(await own.newPage());
  const streams = [];
  const polls = [];
  tab.on('request', (request) => {
    if (/\/api\/v1\/hashes\/[^/?]+\/events$/.test(request.url())) streams.push(request.url());
    if (/\?wait=/.test(request.url())) polls.push(request.url());
  });
  await tab.goto(BASE);
  const bytes = randomBytes(4096);
  await tab.getByLabel('Choose one or more files').setInputFiles({
    name: 'streamed.bin', mimeType: 'application/octet-stream', buffer: bytes,
  });
  await tab.getByRole('button', { name: 'Upload' }).click();
  const md5 = tab.locator('.task .md5').first();
  await md5.waitFor({ timeout: 30000 });
  assert.equal(await md5.textContent(), createHash('md5').update(bytes).digest('hex'));
  assert.equal(streams.length, 1, `event streams opened: ${streams}`);
  assert.deepEqual(polls, [], 'no long-poll while the stream works');
  await own.close();
});

test('a hashing progress event shows as a progress bar', async () => {
  // The stream as the service sends it for a large file mid-hash (the service side of progress
  // is tested against real workers in the Rust tests); `retry` keeps the page from reconnecting
  // before the bar is checked.
  const own = await browser.newContext();
  const tab = watchCsp(await own.newPage());
  const id = randomUUID();
  const task = { id, status: 'processing', md5: null, digests: null, file_name: 'big.iso', size_bytes: 4 * 1024 ** 3,
    progress: { bytes_hashed: 0, size_bytes: 4 * 1024 ** 3 }, error: null, attempts: 1,
    created_at: new Date().toISOString(), started_at: new Date().toISOString(), finished_at: null };
  await tab.route(/\/api\/v1\/hashes\/[^/?]+\/events$/, (route) => route.fulfill({
    status: 200,
    headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
    body: `retry: 600000\nevent: status\nid: status-processing-1\ndata: ${JSON.stringify(task)}\n\n`
      + `event: progress\nid: progress-1-1073741824\ndata: ${JSON.stringify({ id, bytes_hashed: 1024 ** 3, size_bytes: 4 * 1024 ** 3 })}\n\n`,
  }));
  // A task this browser remembers is followed as the page loads.
  await tab.goto(BASE);
  await tab.evaluate((saved) => {
    localStorage.setItem('md5.recentTasks', JSON.stringify([{ id: saved, file_name: 'big.iso' }]));
  }, id);
  await tab.reload();
  const bar = tab.getByLabel('Hashing progress of big.iso');
  await bar.waitFor({ timeout: 10000 });
  await tab.locator('.hashing-label', { hasText: 'Hashing: 1.0 GiB of 4.0 GiB' }).waitFor({ timeout: 10000 });
  assert.equal(await bar.getAttribute('value'), String(1024 ** 3));
  await tab.screenshot({ path: `${SHOTS}/hashing-progress.png` });
  await own.close();
});

test('the page asks for the longest wait the service allows', async () => {
  // The service answers as one whose MAX_WAIT_SECONDS is 5 would: a wait above it is a 400
  // naming the longest; the page must ask again with it, not retry the same wait for ever.
  // The event stream is refused (as a proxy that drops it would), so the page long-polls.
  const own = await browser.newContext();
  const tab = watchCsp(await own.newPage());
  await tab.route(/\/api\/v1\/hashes\/[^/?]+\/events$/, (route) => route.abort());
  const waits = [];
  await tab.route(/\/api\/v1\/hashes\/[^/?]+\?wait=/, async (route) => {
    const wait = Number(new URL(route.request().url()).searchParams.get('wait'));
    waits.push(wait);
    if (wait > 5) {
      await route.fulfill({
        status: 400,
        contentType: 'application/problem+json',
        body: JSON.stringify({ type: '/problems/bad-request', title: 'Bad Request', status: 400,
          detail: 'wait must be a number of seconds from 0 to 5', max_wait_seconds: 5 }),
      });
    } else {
      await route.continue();
    }
  });
  await tab.goto(BASE);
  const bytes = randomBytes(1024);
  await tab.getByLabel('Choose one or more files').setInputFiles({
    name: 'short-wait.bin', mimeType: 'application/octet-stream', buffer: bytes,
  });
  await tab.getByRole('button', { name: 'Upload' }).click();
  const md5 = tab.locator('.task .md5').first();
  await md5.waitFor({ timeout: 30000 });
  assert.equal(await md5.textContent(), createHash('md5').update(bytes).digest('hex'));
  assert.ok(waits.length >= 1 && waits.every((wait, i) => (i === 0 ? wait === 30 : wait === 5)), `waits asked: ${waits}`);
  assert.equal(await tab.getByText('Retrying').count(), 0, 'no error was shown');
  await own.close();
});

test('a large upload cut off by a reload is offered again and continued from the service\'s offset', async () => {
  const big = randomBytes(12 * 1024 * 1024);
  const bigMd5 = createHash('md5').update(big).digest('hex');
  // From disk, so that both choices of the file have the same modification time (part of
  // tus-js-client's fingerprint of a file).
  const dir = mkdtempSync(join(tmpdir(), 'md5-page-'));
  const file = join(dir, 'large.bin');
  writeFileSync(file, big);
  const resumable = await browser.newContext();
  const tab = watchCsp(await resumable.newPage());
  // The first 4 MiB chunk reaches the service; the second never does (the request hangs until
  // the reload cancels it; the route stays, so nothing lets it through meanwhile).
  let patches = 0;
  let blocking = true;
  await tab.route('**/api/v1/uploads/*', (route) => {
    if (blocking && route.request().method() === 'PATCH' && ++patches > 1) return new Promise(() => {});
    return route.continue();
  });
  await tab.goto(BASE);
  await tab.getByLabel('Choose one or more files').setInputFiles(file);
  await tab.getByRole('button', { name: 'Upload' }).click();
  await tab.waitForFunction(() => document.querySelector('.task')?.dataset.taskId);
  const id = await tab.locator('.task').first().getAttribute('data-task-id');
  for (let i = 0; ; i += 1) {
    const task = await (await fetch(`${BASE}/api/v1/hashes/${id}`)).json();
    assert.equal(task.status, 'uploading');
    if (task.bytes_received >= 4 * 1024 * 1024) break;
    assert.ok(i < 200, 'the first chunk did not arrive');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await tab.reload();
  blocking = false;
  // The page lists the unfinished task again (its script has run).
  await tab.locator(`.task[data-task-id="${id}"] .status-uploading`).waitFor({ timeout: 10000 });
  await tab.getByLabel('Choose one or more files').setInputFiles(file);
  await tab.getByRole('button', { name: 'Upload' }).click();
  await tab.getByRole('button', { name: 'Continue it' }).click();
  const md5 = tab.locator(`.task[data-task-id="${id}"] .md5`).first();
  await md5.waitFor({ timeout: 30000 });
  assert.equal(await md5.textContent(), bigMd5, 'the continued upload (same id) has the whole file\'s MD5');
  const task = await (await fetch(`${BASE}/api/v1/hashes/${id}`)).json();
  assert.equal(task.size_bytes, big.length);
  await tab.screenshot({ path: `${SHOTS}/resumed.png` });
  await resumable.close();
  rmSync(dir, { recursive: true, force: true });
});

test('with API keys, the page asks for its key once, and another key\'s task is not found', async () => {
  // From here on the service has keys: every API request needs one (this test runs last but one).
  const createKey = (name) => execFileSync(process.env.MD5_API_BIN, ['keys', 'create', '--name', name],
    { env: { ...process.env, RUST_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  const [mine, theirs] = [createKey('page-mine'), createKey('page-theirs')];
  for (let i = 0; (await fetch(`${BASE}/api/v1/hashes/${uploadedId}`)).status !== 401; i += 1) {
    assert.ok(i < 40, 'the api did not read the new keys within 2 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const keyed = await browser.newContext();
  const tab = watchCsp(await keyed.newPage());
  const prompts = [];
  tab.on('dialog', (dialog) => { prompts.push(dialog.type()); dialog.accept(mine); });
  await tab.goto(BASE);
  await tab.getByLabel('Choose one or more files').setInputFiles({
    name: 'keyed.bin', mimeType: 'application/octet-stream', buffer: content,
  });
  await tab.getByRole('button', { name: 'Upload' }).click();
  const md5 = tab.locator('.task .md5').first();
  await md5.waitFor({ timeout: 30000 });
  assert.equal(await md5.textContent(), expectedMd5);
  assert.deepEqual(prompts, ['prompt'], 'asked once, then the key is kept for the session');
  const id = await tab.locator('.task').first().getAttribute('data-task-id');
  // Another key looks the task up: not found, as an id that never existed.
  const other = await browser.newContext();
  const theirTab = watchCsp(await other.newPage());
  theirTab.on('dialog', (dialog) => dialog.accept(theirs));
  await theirTab.goto(BASE);
  await theirTab.locator('#lookup-input').fill(id);
  await theirTab.locator('#lookup-input').press('Enter');
  await theirTab.locator('#lookup-message', { hasText: 'Not found' }).waitFor({ timeout: 10000 });
  await keyed.close();
  await other.close();
});

test('no page reported a Content-Security-Policy violation', () => {
  assert.deepEqual(cspViolations, []);
});
