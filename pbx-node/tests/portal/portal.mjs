// Drives the pbx-node web portal in Debian's headless Chromium (through
// playwright-core) for pbx-node/tests/portal.rs: log in, switch tenant,
// create a phone extension (first with a bad password, to see the
// field-level message), find it by search, edit it, import a CSV with one
// bad row and see the report, delete it with confirmation, and visit every
// other page. Each step checks what the page shows; the first failed check
// ends the run with a non-zero exit. A screenshot of each page goes to the
// screenshot directory. Progress goes to stderr, and the last stdout line
// is a JSON object naming the steps passed and the screenshots taken.
//
//   node portal.mjs <base url> <username> <password> <tenant code> <screenshot dir>
import { chromium } from 'playwright-core';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, username, password, tenant, shots] = process.argv.slice(2);
const results = { steps: [], screenshots: [] };
const step = (text) => process.stderr.write(`portal test: ${text}\n`);

class CheckFailed extends Error {}
function check(condition, what) {
  if (!condition) throw new CheckFailed(what);
}
const passed = (name) => {
  results.steps.push(name);
  step(`passed: ${name}`);
};

mkdirSync(shots, { recursive: true });
let shotCount = 0;
async function shot(page, name) {
  shotCount += 1;
  const file = join(shots, `${String(shotCount).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  results.screenshots.push(file);
}

const text = async (page, selector) => (await page.locator(selector).innerText()).trim();

const profile = mkdtempSync(join(tmpdir(), 'portal-chromium-'));
let context;
let failure = null;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1366, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  // Log in: / sends an anonymous browser to the login page.
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', `/ leads to /login, not ${page.url()}`);
  await shot(page, 'login');
  await page.fill('#username', username);
  await page.fill('#password', 'not the password');
  await page.click('#login');
  check((await text(page, '#form-error')).includes('wrong username or password'),
    'a wrong password is refused on the login page');
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('#login');
  await page.waitForURL(/\/extensions$/);
  check((await text(page, 'h1')) === 'Extensions', 'logged in, the extensions list shows');
  passed('login');

  // The system administrator's tenant switcher.
  await page.selectOption('#tenant-switch', tenant);
  await page.click('.switcher button');
  await page.waitForURL(/\/extensions$/);
  check(await page.inputValue('#tenant-switch') === tenant, `switched to ${tenant}`);
  await shot(page, 'extensions');
  passed('tenant switch');

  // Create a phone extension: a bad password gets its message beside the field.
  await page.click('#new-extension');
  await page.waitForURL(/\/extensions\/new\?kind=phone$/);
  await shot(page, 'new-phone');
  await page.fill('#f-number', '250');
  await page.fill('#f-display_name', 'Front Desk');
  await page.fill('#f-password', 'short');
  await page.click('#save');
  const fieldError = await text(page, '#f-password-error');
  check(fieldError.includes('8 to 64 characters'), `field-level password message, got "${fieldError}"`);
  check(await page.inputValue('#f-display_name') === 'Front Desk', 'the refused form keeps what was typed');
  await shot(page, 'new-phone-error');
  await page.fill('#f-password', 'desk-secret-250');
  await page.click('#save');
  await page.waitForURL(/\/extensions\/250\?done=created$/);
  check((await text(page, '.notice')).includes('created'), 'creation confirmed');
  passed('create');

  // Find it by search.
  await page.goto(`${base}/extensions`);
  await page.fill('#search', 'Front Desk');
  await page.click('#search-button');
  await page.waitForURL(/search=Front\+Desk/);
  const found = page.locator('#extensions tbody tr');
  check(await found.count() === 1, 'the search finds one extension');
  check((await found.first().innerText()).includes('250'), 'the search finds 250');
  check((await text(page, '#showing')).includes('of 1'), 'the pager counts one');
  await shot(page, 'search');
  passed('search');

  // Edit it.
  await page.click('#extensions a[href="/extensions/250"]');
  await page.waitForURL(/\/extensions\/250$/);
  check(await page.inputValue('#f-number') === '250', 'the edit form shows the number');
  await page.fill('#f-display_name', 'Front Desk East');
  await page.check('#f-dnd');
  await page.fill('#f-ring_timeout_secs', '2');
  await page.click('#save');
  check((await text(page, '#f-ring_timeout_secs-error')).includes('5 to 600'),
    'a ring timeout out of range is refused beside its field');
  await page.fill('#f-ring_timeout_secs', '20');
  await page.click('#save');
  await page.waitForURL(/\/extensions\/250\?done=saved$/);
  check(await page.inputValue('#f-display_name') === 'Front Desk East', 'the new name is saved');
  check(await page.isChecked('#f-dnd'), 'DND is saved');
  check(await page.inputValue('#f-ring_timeout_secs') === '20', 'the ring timeout is saved');
  await shot(page, 'edit');
  passed('edit');

  // The other kinds: a custom extension calling an outside number, and a
  // virtual one ringing 250 and 100 (a member that is no phone is refused
  // beside the members field).
  await page.goto(`${base}/extensions`);
  await page.click('#new-extension');
  await page.click('.tabs a[href="/extensions/new?kind=custom"]');
  await page.waitForURL(/kind=custom$/);
  check(await page.locator('#f-password').count() === 0, 'a custom extension has no SIP password');
  await page.fill('#f-number', '270');
  await page.fill('#f-display_name', 'Front Desk Mobile');
  await page.fill('#f-custom_destination', '+15551234567');
  await shot(page, 'new-custom');
  await page.click('#save');
  await page.waitForURL(/\/extensions\/270\?done=created$/);
  check(await page.inputValue('#f-custom_destination') === '+15551234567', 'the custom destination is saved');
  await page.goto(`${base}/extensions/new?kind=virtual`);
  await page.fill('#f-number', '280');
  await page.fill('#f-display_name', 'Front Desk Group');
  await page.fill('#f-members', '250, 999');
  await page.click('#save');
  check((await text(page, '#f-members-error')).includes('999 is not a phone extension'),
    'a member that does not exist is refused beside the members field');
  await shot(page, 'new-virtual-error');
  await page.fill('#f-members', '250, 100');
  await page.click('#save');
  await page.waitForURL(/\/extensions\/280\?done=created$/);
  check(await page.inputValue('#f-members') === '250, 100', 'the members are saved');
  await shot(page, 'edit-virtual');
  passed('kinds');

  // Import a CSV with one bad row: the report names it, nothing is written.
  await page.goto(`${base}/extensions/import`);
  await shot(page, 'import');
  await page.setInputFiles('#csv-file', {
    name: 'extensions.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(
      'number,display_name,kind,password\n' +
      '260,Imported Good,phone,import-secret-260\n' +
      '26x,Imported Bad,phone,import-secret-261\n'),
  });
  await page.click('#upload');
  await page.waitForSelector('#import-report');
  const report = page.locator('#import-report tbody tr');
  check(await report.count() === 1, 'the report lists one bad row');
  const badRow = await report.first().innerText();
  check(/^3\s+number\s+/.test(badRow.trim()), `the report names line 3, column number: "${badRow}"`);
  check((await text(page, '#form-error')).includes('nothing was imported'), 'the report says nothing was imported');
  await shot(page, 'import-report');
  await page.goto(`${base}/extensions?search=Imported`);
  check((await text(page, '#extensions tbody')).includes('No extensions match'),
    'the good row of the refused file was not imported');
  passed('import report');

  // Bulk create two, whose passwords are shown once; then the list's
  // column choice.
  await page.goto(`${base}/extensions/bulk-create`);
  await page.fill('#f-first', '290');
  await page.fill('#f-count', '2');
  await shot(page, 'bulk-create');
  await page.click('#bulk-create');
  const created = page.locator('#created tbody tr');
  check(await created.count() === 2, 'two extensions created');
  check((await created.first().innerText()).includes('290-GLOBEX'), 'with their usernames');
  await shot(page, 'bulk-created');
  passed('bulk create');
  await page.goto(`${base}/extensions`);
  await page.click('details.columns summary');
  await page.check('details.columns input[value="email"]');
  await page.uncheck('details.columns input[value="department"]');
  await page.click('#apply-columns');
  await page.waitForURL(/cols=email/);
  const headings = await text(page, '#extensions thead');
  check(headings.includes('EMAIL') || headings.includes('Email'), 'the chosen column shows');
  check(!/department/i.test(headings), 'the dropped column is gone');
  passed('columns');

  // CSV export, with the session's cookie.
  const exported = await page.request.get(`${base}/extensions/export.csv`);
  check(exported.status() === 200, 'the export downloads');
  check(exported.headers()['content-type'].startsWith('text/csv'), 'the export is CSV');
  const csv = await exported.text();
  check(csv.startsWith('number,display_name') && csv.includes('Front Desk East'), 'the export holds 250');
  passed('export');

  // Delete all three: select every row found, confirm, gone.
  await page.goto(`${base}/extensions?search=Front+Desk`);
  check(await page.locator('#extensions tbody tr').count() === 3, 'the search finds 250, 270 and 280');
  await page.check('#extensions thead input[data-select-all]');
  check((await text(page, '#bulk-delete')).includes('(3)'), 'the delete button counts the selection');
  await page.uncheck('#extensions input[data-row][value="270"]');
  check((await text(page, '#bulk-delete')).includes('(2)'), 'unticking a row counts down');
  await page.check('#extensions input[data-row][value="270"]');
  await page.click('#bulk-delete');
  await page.waitForURL(/\/extensions\/bulk-delete$/);
  const confirmText = await text(page, '.confirm');
  for (const number of ['250', '270', '280']) {
    check(confirmText.includes(number), `the confirmation names ${number}`);
  }
  await shot(page, 'delete-confirm');
  await page.click('#confirm-delete');
  await page.waitForURL(/done=deleted/);
  check((await text(page, '.notice')).includes('deleted'), 'deletion confirmed');
  await page.goto(`${base}/extensions?search=Front+Desk`);
  check((await text(page, '#extensions tbody')).includes('No extensions match'), '250, 270 and 280 are gone');
  passed('delete');

  // Users, roles and the audit log, which tells what was just done.
  await page.click('a.nav-link[href="/users"]');
  check(await page.locator('#users').count() === 1, 'the users page lists users');
  await shot(page, 'users');
  await page.click('#users a[href="/users/admin@globex"]');
  check(await page.inputValue('#u-role') === 'tenant_admin', 'the user page shows the role');
  await shot(page, 'user-edit');
  await page.click('a.nav-link[href="/roles"]');
  check((await text(page, '#builtin-roles')).includes('Tenant admin'), 'the roles page lists the built-in roles');
  await shot(page, 'roles');
  await page.click('a.nav-link[href="/audit"]');
  const audit = await text(page, '#audit');
  for (const action of ['create', 'update', 'delete']) {
    check(new RegExp(`${action}\\s+extensions? 250`).test(audit), `the audit log shows the ${action} of 250`);
  }
  await shot(page, 'audit');
  passed('users roles audit');

  // Log out: the session is over, pages lead to the login again.
  await page.click('#logout');
  await page.waitForURL(/\/login$/);
  await page.goto(`${base}/extensions`);
  check(new URL(page.url()).pathname === '/login', 'after logout the portal asks to log in');
  passed('logout');
  check(errors.length === 0, `no script errors: ${errors.join('; ')}`);
} catch (e) {
  failure = e instanceof CheckFailed ? `check failed: ${e.message}` : `error: ${e.stack || e}`;
  step(failure);
  if (context) {
    const page = context.pages()[0];
    if (page) await shot(page, 'failure').catch(() => {});
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
results.failure = failure;
process.stdout.write(`${JSON.stringify(results)}\n`);
process.exit(failure ? 1 : 0);
