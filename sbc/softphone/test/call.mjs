// Drives the softphone page in headless Chromium (Debian's, through
// playwright-core): log in, register over WSS, call, check from getStats()
// that audio flows both ways, press keypad keys (RFC 4733 DTMF), hold and
// resume, hang up; then wait for a call (the test has the far end dial
// when it reads "waiting for an incoming call"), see it ring, answer it,
// check its audio, hang up. Prints progress to stderr and one JSON object
// of results on its last stdout line.
//
//   node call.mjs <page url> <user> <domain> <password> <number> <digits>
//
// SOFTPHONE_DEBUG=1 adds JsSIP's session and transport log to the progress.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, user, domain, password, number, digits] = process.argv.slice(2);
const results = { registered: false, established: false, digits: '', ended: false };
const step = (text) => process.stderr.write(`softphone test: ${text}\n`);

// Packets and bytes of the call's audio, from the browser's own counters.
async function audioStats(page) {
  return page.evaluate(async () => {
    const pc = window.softphone.session && window.softphone.session.connection;
    if (!pc) return null;
    const stats = { sent: 0, received: 0, bytesSent: 0, bytesReceived: 0 };
    (await pc.getStats()).forEach((report) => {
      if (report.kind !== 'audio') return;
      if (report.type === 'outbound-rtp') {
        stats.sent += report.packetsSent;
        stats.bytesSent += report.bytesSent;
      } else if (report.type === 'inbound-rtp') {
        stats.received += report.packetsReceived;
        stats.bytesReceived += report.bytesReceived;
      }
    });
    return stats;
  });
}

const status = (page, text) =>
  page.waitForFunction((t) => window.softphone.events.includes(t), text, { timeout: 15000 });

const profile = mkdtempSync(join(tmpdir(), 'softphone-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    ignoreHTTPSErrors: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      // The SBC's certificate is self-signed; the WSS connection needs this too.
      '--ignore-certificate-errors',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => step(`console: ${m.text()}`));
  if (process.env.SOFTPHONE_DEBUG) {
    await page.addInitScript(() => {
      localStorage.debug = 'JsSIP:RTCSession JsSIP:Transport';
    });
  }
  step(`opening ${url}`);
  await page.goto(url);
  await page.fill('#user', user);
  await page.fill('#domain', domain);
  await page.fill('#password', password);
  await page.click('#login');
  await status(page, 'registered');
  results.registered = true;
  step('registered over WSS');

  await page.fill('#target', number);
  await page.click('#dial');
  await status(page, 'in call');
  results.established = true;
  step('call established');
  await page.waitForTimeout(2000);
  results.before = await audioStats(page);

  for (const digit of digits) {
    await page.click(`#keypad button[data-dtmf="${digit}"]`);
    results.digits += digit;
    await page.waitForTimeout(400);
  }
  // Chromium plays queued tones one after another: all must be out before
  // the hold below, which (music on hold) renegotiates without events.
  await page.waitForFunction(() => {
    const pc = window.softphone.session && window.softphone.session.connection;
    const sender = pc && pc.getSenders().find((s) => s.dtmf);
    return sender && sender.dtmf.toneBuffer === '';
  }, null, { timeout: 15000 });
  await page.waitForTimeout(1000);
  results.after = await audioStats(page);
  step(`audio ${JSON.stringify(results.before)} -> ${JSON.stringify(results.after)}`);

  // Each waits for the re-INVITE's answer.
  await page.click('#hold');
  await page.waitForFunction(() => window.softphone.held && !window.softphone.reoffering, null, { timeout: 15000 });
  results.held = true;
  await page.click('#hold');
  await page.waitForFunction(() => !window.softphone.held && !window.softphone.reoffering, null, { timeout: 15000 });
  results.resumed = true;
  step('held and resumed');

  await page.click('#hangup');
  await page.waitForFunction(() => window.softphone.session === null, null, { timeout: 15000 });
  results.ended = true;
  step('hung up');

  // A call to the browser: the test has the far end dial us on this line.
  step('waiting for an incoming call');
  await page.waitForSelector('#incoming:not([hidden])', { timeout: 15000 });
  results.rang = true;
  await page.click('#answer');
  await page.waitForFunction(
    () => window.softphone.session && window.softphone.events.at(-1) === 'in call',
    null,
    { timeout: 15000 },
  );
  results.answered = true;
  await page.waitForTimeout(2000);
  results.incoming = await audioStats(page);
  step(`incoming call audio ${JSON.stringify(results.incoming)}`);
  await page.click('#hangup');
  await page.waitForFunction(() => window.softphone.session === null, null, { timeout: 15000 });
  results.incomingEnded = true;
} catch (e) {
  results.error = String(e);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
process.exit(results.error ? 1 : 0);
