// The browser softphone served by the SBC: JsSIP registers over WSS to the
// SBC that served this page, and calls run WebRTC through the SBC's gateway.
// `window.softphone` exposes the state for the system test and debugging.
import JsSIP from 'jssip';

const $ = (id) => document.getElementById(id);
const KEYS = ['1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '0', '#'];
const MEDIA = { audio: true, video: false };
// The SBC is ICE-lite on a public address: no STUN or TURN is needed.
const PC_CONFIG = { iceServers: [] };

const state = {
  ua: null,
  session: null,
  held: false,
  // A hold or resume re-INVITE is in flight: JsSIP refuses another one.
  reoffering: false,
  registered: false,
  events: [],
};
window.softphone = state;

function log(event) {
  state.events.push(event);
  $('status').textContent = event;
}

let ringer = null;
function ring(on) {
  if (on && !ringer) {
    const context = new AudioContext();
    const tone = context.createOscillator();
    const gain = context.createGain();
    tone.frequency.value = 440;
    gain.gain.value = 0.1;
    tone.connect(gain).connect(context.destination);
    tone.start();
    // 1 s on, 2 s off.
    const cadence = setInterval(() => {
      gain.gain.value = gain.gain.value > 0 ? 0 : 0.1;
    }, 1500);
    ringer = { context, cadence };
  } else if (!on && ringer) {
    clearInterval(ringer.cadence);
    ringer.context.close();
    ringer = null;
  }
}

function callControls(inCall, ringing) {
  $('dial').disabled = inCall;
  $('answer').disabled = !ringing;
  $('hangup').disabled = !inCall;
  $('hold').disabled = !inCall || ringing;
  for (const key of document.querySelectorAll('#keypad button')) key.disabled = !inCall || ringing;
  $('incoming').hidden = !ringing;
}

function attach(session) {
  state.session = session;
  state.held = false;
  state.reoffering = false;
  $('hold').textContent = 'Hold';
  const incoming = session.direction === 'incoming';
  if (incoming) {
    $('incoming').textContent = `Incoming call from ${session.remote_identity.uri.user}`;
    ring(true);
  }
  callControls(true, incoming);
  const playRemote = () => {
    session.connection.addEventListener('track', (e) => {
      $('remote-audio').srcObject = e.streams[0];
    });
  };
  if (session.connection) playRemote();
  else session.on('peerconnection', playRemote);
  session.on('progress', () => log(incoming ? 'ringing' : 'calling…'));
  session.on('confirmed', () => {
    ring(false);
    callControls(true, false);
    log('in call');
  });
  // JsSIP reports our own hold when it sends the re-INVITE; the status
  // changes when the answer comes (see hold()). The far end's hold is
  // reported as it comes.
  session.on('hold', (e) => {
    if (e.originator === 'local') return;
    log('held by the other party');
  });
  session.on('unhold', (e) => {
    if (e.originator === 'local') return;
    log('in call');
  });
  const ended = (why) => (e) => {
    ring(false);
    state.session = null;
    callControls(false, false);
    log(`${why}${e && e.cause ? `: ${e.cause}` : ''}`);
  };
  session.on('ended', ended('call ended'));
  session.on('failed', ended('call failed'));
}

function login(event) {
  event.preventDefault();
  const user = $('user').value.trim();
  const domain = $('domain').value.trim();
  // The SBC that served this page takes WebSocket SIP on its WSS port.
  fetch('config.json')
    .then((r) => r.json())
    .then((config) => {
      const socket = new JsSIP.WebSocketInterface(`wss://${location.hostname}:${config.wss_port}`);
      const ua = new JsSIP.UA({
        sockets: [socket],
        uri: `sip:${user}@${domain}`,
        authorization_user: user,
        password: $('password').value,
        register: true,
        session_timers: false,
      });
      ua.on('connected', () => log('connected'));
      ua.on('disconnected', () => log('disconnected'));
      ua.on('registered', () => {
        state.registered = true;
        $('phone').disabled = false;
        log('registered');
      });
      ua.on('unregistered', () => {
        state.registered = false;
        $('phone').disabled = true;
        log('logged out');
      });
      ua.on('registrationFailed', (e) => {
        state.registered = false;
        log(`registration failed: ${e.cause}`);
      });
      ua.on('newRTCSession', (e) => {
        if (state.session) {
          e.session.terminate({ status_code: 486 });
          return;
        }
        attach(e.session);
      });
      state.ua = ua;
      ua.start();
      $('login').hidden = true;
      $('logout').hidden = false;
    })
    .catch((e) => log(`cannot load config.json: ${e}`));
}

function logout() {
  if (state.ua) state.ua.stop();
  state.ua = null;
  $('login').hidden = false;
  $('logout').hidden = true;
}

function dial() {
  const target = $('target').value.trim();
  if (!state.ua || !target) return;
  const domain = $('domain').value.trim();
  state.ua.call(`sip:${target}@${domain}`, { mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
}

function answer() {
  if (state.session) state.session.answer({ mediaConstraints: MEDIA, pcConfig: PC_CONFIG });
}

function hangup() {
  if (state.session) state.session.terminate();
}

// Hold and resume take effect when the re-INVITE is answered; until then
// the button waits (a failed re-INVITE ends the call, as JsSIP does).
function hold() {
  const session = state.session;
  if (!session || state.reoffering) return;
  const resume = state.held;
  const done = () => {
    state.reoffering = false;
    state.held = !resume;
    $('hold').disabled = false;
    $('hold').textContent = state.held ? 'Resume' : 'Hold';
    log(state.held ? 'on hold' : 'in call');
  };
  state.reoffering = true;
  $('hold').disabled = true;
  const sent = resume ? session.unhold({}, done) : session.hold({}, done);
  if (!sent) {
    state.reoffering = false;
    $('hold').disabled = false;
  }
}

// RFC 4733 events in the RTP stream (not SIP INFO): what the SBC relays.
function dtmf(key) {
  if (state.session) state.session.sendDTMF(key, { transportType: 'RFC2833', duration: 160 });
}

for (const key of KEYS) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = key;
  button.dataset.dtmf = key;
  button.disabled = true;
  button.addEventListener('click', () => dtmf(key));
  $('keypad').appendChild(button);
}
$('login-form').addEventListener('submit', login);
$('logout').addEventListener('click', logout);
$('dial').addEventListener('click', dial);
$('answer').addEventListener('click', answer);
$('hangup').addEventListener('click', hangup);
$('hold').addEventListener('click', hold);
