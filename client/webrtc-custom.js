/**
 * webrtc-custom.js: browser client of the WebRTC-to-SIP gateway's JSON protocol
 * (docs/CUSTOM_SIGNALING_PROTOCOL.md, version 1). ES module, no dependencies.
 *
 *   const gw = new GatewayClient('ws://127.0.0.1:8080/');
 *   await gw.connect();
 *   await gw.register('5001', 'agent5001', 'Agent 5001');
 *   const call = await gw.call('5002');   // the `call` frame has been sent
 *   await call.accepted;                    // callAccepted (rejects on callFailed)
 *
 * Events (CustomEvent, payload in `detail`): one per server message, named by its
 * type ('registered', 'incomingCall', 'callEnded', 'error', ...), plus
 * 'message' {direction, frame, text} for every frame in and out, 'state' {state}
 * for the connection and 'callstate' (detail: the call) whenever a call changes.
 */

/**
 * @typedef {object} GatewayOptions
 * @property {RTCIceServer[]} [iceServers] default [] (replaced by registered.payload.iceServers when sent)
 * @property {RTCBundlePolicy} [bundlePolicy] default 'balanced'
 * @property {number} [iceGraceMs] wait after the first ICE candidate, default 150
 * @property {number} [iceCapMs] longest wait for ICE candidates, default 2000
 * @property {number} [requestTimeoutMs] default 10000 (register, hold, resume, dtmf, transfer: 60000; call, conference: none)
 * @property {number} [pingIntervalMs] default 20000
 * @property {{baseMs?: number, maxMs?: number}} [reconnect] back-off, default {baseMs: 500, maxMs: 30000}
 * @property {HTMLElement | ((call: Call) => HTMLAudioElement)} [audioElement] container for, or factory of, the remote audio elements
 * @property {string[] | null} [codecs] codec preferences of the browser, default the gateway's ['PCMU', 'PCMA', 'telephone-event']
 */
/**
 * @typedef {object} Timing all in ms since t0 (dial, or answer click for inbound calls)
 * @property {number} t0 performance.now() at the start
 * @property {number} [gatherMs] ICE wait of the set-up
 * @property {number} [offerReadyMs] offer (or answer) sent
 * @property {number} [answeredMs] callAccepted received
 * @property {number} [connectedMs] pc.connectionState 'connected'
 */
/**
 * @typedef {object} Call
 * @property {string} callId
 * @property {'outbound'|'inbound'} direction
 * @property {'new'|'calling'|'ringing'|'early'|'incoming'|'answering'|'active'|'held'|'ended'} state
 * @property {string} peer number called, or the caller's `from`
 * @property {string} [displayName] the caller's display name (untrusted text)
 * @property {RTCPeerConnection | null} pc
 * @property {MediaStream | null} stream microphone
 * @property {HTMLAudioElement | null} audio remote audio
 * @property {boolean} muted
 * @property {boolean} held
 * @property {number} [offerReadyMs]
 * @property {string} [reason] why it ended
 * @property {Timing} t
 * @property {Promise<object>} accepted resolves with callAccepted's payload, rejects on callFailed or the end
 */

const LONG = 6e4;
const now = () => performance.now();
const warn = (e) => console.warn('[gw]', e);
/** An Error carrying the protocol's code and reason. */
const fail = (code, reason, requestType) => Object.assign(new Error(reason || code), { code, reason, requestType });

export class GatewayClient extends EventTarget {
  #ws = null;
  #p = new Map(); // pending requests: id -> {res, rej, t}
  #t = new Map(); // callId -> Timing (kept after the call)
  #seq = 0;
  #n = 0; // reconnect attempts
  #rt; // reconnect timer
  #ping;
  #stop = true;
  #cred = null;
  #tok = null; // resume token: after a drop, `attach` takes the session (and its calls) over
  #last = 0; // highest seq handled

  /** @param {string} url @param {GatewayOptions} [options] */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.o = {
      iceServers: [], bundlePolicy: 'balanced', iceGraceMs: 150, iceCapMs: 2000, requestTimeoutMs: 1e4,
      pingIntervalMs: 2e4, codecs: ['PCMU', 'PCMA', 'telephone-event'], ...options,
      reconnect: { baseMs: 500, maxMs: 3e4, ...options.reconnect },
    };
    this.iceServers = this.o.iceServers;
    /** @type {Map<string, Call>} */
    this.calls = new Map();
    /** @type {'connecting'|'open'|'closed'|'reconnecting'} */
    this.state = 'closed';
    this.registered = false;
    /** @type {string | null} */
    this.dn = null;
  }

  // ---- connection ----

  /** Opens the WebSocket and keeps it open (reconnecting) until close(). @returns {Promise<void>} once open */
  connect() {
    this.#stop = false;
    if (!this.#ws && this.state != 'reconnecting') (this.#n = 0), this.#open();
    return new Promise((r) => {
      const f = () => this.state == 'open' && (this.removeEventListener('state', f), r());
      this.addEventListener('state', f);
      f();
    });
  }

  /** Closes the connection for good (the gateway then ends this connection's calls). */
  close() {
    this.#stop = true;
    // Unregistered, the session ends with the socket instead of waiting for an attach.
    if (this.#tok && this.#ws?.readyState == 1) this.#ws.send('{"type":"unregister"}');
    this.#tok = null;
    clearTimeout(this.#rt);
    this.#ws ? this.#closed() : this.#set('closed');
  }

  #open() {
    this.#set(this.#n ? 'reconnecting' : 'connecting');
    const ws = (this.#ws = new WebSocket(this.url, 'sip'));
    ws.onopen = () => {
      this.#n = 0;
      this.#set('open');
      this.#ping = setInterval(
        () => this.#req('ping').catch((e) => e.code == 'timeout' && ws == this.#ws && this.#closed()),
        this.o.pingIntervalMs,
      );
      if (this.#tok) this.#attach();
      else if (this.#cred) this.register(...this.#cred).catch(warn);
    };
    ws.onmessage = (e) => this.#recv(e.data);
    ws.onclose = ws.onerror = () => this.#closed(); // error: a failed connection (always followed by close in browsers)
  }

  #closed() {
    const ws = this.#ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState < 2) ws.close();
    this.#ws = null;
    clearInterval(this.#ping);
    this.registered = false;
    for (const q of this.#p.values()) clearTimeout(q.t), q.rej(fail('closed', 'connection closed'));
    this.#p.clear();
    // Without a session to resume, the gateway ends every call of a closed connection.
    if (!this.#tok || this.#stop) this.#endAll();
    if (this.#stop) return this.#set('closed');
    const { baseMs, maxMs } = this.o.reconnect, d = Math.min(maxMs, baseMs * 2 ** this.#n++);
    this.#set('reconnecting');
    this.#rt = setTimeout(() => this.#open(), d / 2 + (Math.random() * d) / 2);
  }

  #set(state) {
    if (state != this.state) this.state = state, this.#emit('state', { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** One request; resolves with the reply frame, rejects with the `error` (code, reason) or on timeout. */
  #req(type, payload, ms = this.o.requestTimeoutMs) {
    return new Promise((res, rej) => {
      if (this.#ws?.readyState != 1) return rej(fail('closed', 'not connected', type));
      const id = 'q' + ++this.#seq, frame = payload ? { type, id, payload } : { type, id }, text = JSON.stringify(frame);
      const t = ms && setTimeout(() => this.#p.delete(id) && rej(fail('timeout', type + ' timed out', type)), ms);
      this.#p.set(id, { res, rej, t });
      this.#ws.send(text);
      this.#emit('message', { direction: 'out', frame, text });
    });
  }

  #recv(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {}
    this.#emit('message', { direction: 'in', frame: m, text });
    if (!m?.type) return;
    if (m.seq) {
      if (m.seq <= this.#last) return; // replayed after an attach, handled already
      this.#last = m.seq;
    }
    const { type, id, payload: p = {} } = m, q = id && this.#p.get(id), c = this.calls.get(p.callId);
    if (q) {
      this.#p.delete(id);
      clearTimeout(q.t);
      type == 'error' ? q.rej(fail(p.code, p.reason, p.requestType)) : q.res(m);
    }
    switch (type) {
      case 'registered':
        if (p.iceServers) this.iceServers = p.iceServers;
        if (p.protocol != 1) warn('protocol ' + p.protocol);
      case 'attached': // the session is back: calls the gateway no longer has are gone
        for (const c of this.calls.values()) p.calls && !p.calls.some((x) => x.callId == c.callId) && this.#gone(c);
        this.registered = true;
        this.dn = p.dn;
        this.#tok = p.resumeToken;
        break;
      case 'unregistered':
        this.registered = false;
        break;
      case 'incomingCall':
        this.#new(p.callId, 'inbound', 'incoming', { peer: p.from, displayName: p.displayName, offer: p.sdp });
        break;
      case 'ringing':
        if (c?.state == 'calling') this.#state(c, 'ringing');
        break;
      case 'progress': // early media: a provisional answer, kept for a callAccepted without SDP
        if (c?.pc && /^(calling|ringing|early)$/.test(c.state)) {
          c.early = p.sdp;
          this.#state(c, 'early');
          c.pc.setRemoteDescription({ type: 'pranswer', sdp: p.sdp }).catch(warn);
        }
        break;
      case 'callAccepted':
        if (c) this.#accepted(c, p);
        break;
      case 'callFailed':
      case 'callEnded':
      case 'callCancelled':
      case 'answeredElsewhere':
        if (c) this.#end(c, p);
        break;
      case 'updateOffer':
        if (c?.pc) this.#update(c, p.sdp);
    }
    this.#emit(type, p);
  }

  // ---- registration ----

  /** @returns {Promise<object>} registered's payload; kept for automatic re-registration after a reconnect */
  async register(dn, password, displayName) {
    this.#last = 0; // a new session counts from 1
    const m = await this.#req('register', { dn, password, displayName }, LONG);
    this.#cred = [dn, password, displayName];
    return m.payload;
  }

  #attach() {
    this.#req('attach', { token: this.#tok, lastSeq: this.#last }).catch((e) => {
      if (e.code != 'closed') (this.#tok = null), this.#endAll(), this.#cred && this.register(...this.#cred).catch(warn);
    });
  }

  #gone(c) {
    this.#end(c, { callId: c.callId, by: 'local', reason: 'disconnected' }, 1);
  }

  #endAll() {
    for (const c of this.calls.values()) this.#gone(c);
  }

  /** @returns {Promise<object>} unregistered's payload */
  async unregister() {
    this.#cred = this.#tok = null;
    return (await this.#req('unregister')).payload;
  }

  // ---- calls ----

  /**
   * Places a call. Resolves once the `call` frame is sent, with the call; its
   * `accepted` promise settles on callAccepted (remote answer applied) or callFailed.
   * @param {string} to
   * @param {{stream?: MediaStream, referredBy?: string}} [o]
   * @returns {Promise<Call>}
   */
  async call(to, o = {}) {
    const c = this.#new('c-' + Date.now().toString(36) + Math.random().toString(36).slice(2, 10), 'outbound', 'new', { peer: to });
    try {
      const sdp = await this.#offer(c, o.stream);
      this.#req('call', { to, callId: c.callId, sdp, referredBy: o.referredBy }, 0).catch((e) => this.#end(c, e));
      this.#state(c, 'calling');
      return c;
    } catch (e) {
      throw (this.#end(c, e), e);
    }
  }

  /**
   * Answers a ringing incoming call. @param {string} callId
   * @param {{stream?: MediaStream}} [o] @returns {Promise<object>} callAccepted's payload
   */
  async answer(callId, o = {}) {
    const c = this.#get(callId);
    if (c.state != 'incoming') throw fail('invalid_state', 'call is not ringing');
    c.t.t0 = now();
    this.#state(c, 'answering');
    try {
      const pc = await this.#media(c, o.stream);
      await pc.setRemoteDescription({ type: 'offer', sdp: c.offer });
      this.#tracks(c, 1);
      const sdp = await this.#local(c);
      await this.#req('answer', { callId, sdp });
      return c.accepted;
    } catch (e) {
      this.#drop(c);
      if (c.state != 'ended') this.#state(c, 'incoming'); // still ringing: answer again or reject
      throw e;
    }
  }

  /** Refuses a ringing incoming call with 486, 480 or 603. */
  async reject(callId, code = 486) {
    return (await this.#req('reject', { callId, code })).payload;
  }

  /** Ends a call in any phase (always ended locally). @param {string} callId @param {string} [reason] */
  async hangup(callId, reason) {
    const c = this.#get(callId);
    if (c.state == 'new') return this.#end(c, { callId, by: 'local', reason: 'hangup' }); // nothing sent yet
    try {
      return (await this.#req('hangup', { callId, reason })).payload;
    } finally {
      this.#end(c, { callId, by: 'local', reason: reason || 'hangup' });
    }
  }

  /** Puts the far end on hold (re-offer sendonly). @returns {Promise<object>} held's payload */
  hold(callId) {
    return this.#dir(callId, 'hold', 'sendonly');
  }

  /** Takes the far end off hold (re-offer sendrecv). @returns {Promise<object>} resumed's payload */
  resume(callId) {
    return this.#dir(callId, 'resume', 'sendrecv');
  }

  /** Mutes the microphone of a call (track.enabled only, nothing is signalled). */
  mute(callId, on = true) {
    const c = this.#get(callId);
    c.muted = on;
    this.#tracks(c);
    this.#state(c, c.state);
  }

  unmute(callId) {
    this.mute(callId, false);
  }

  /** Sends digits as SIP INFO. @returns {Promise<object>} dtmfSent's payload */
  async sendDtmf(callId, digits, durationMs = 160) {
    return (await this.#req('dtmf', { callId, digits: String(digits), durationMs }, LONG)).payload;
  }

  /**
   * Blind transfer to a number, or attended transfer replacing another call.
   * @param {string} callId @param {string | {replacesCallId: string}} to
   * @returns {Promise<object>} transferAccepted's payload
   */
  async transfer(callId, to) {
    const p = typeof to == 'string' ? { callId, target: to } : { callId, replacesCallId: to.replacesCallId };
    return (await this.#req('transfer', p, LONG)).payload;
  }

  /**
   * Three-way call: a new leg to the bridge (its own callId), both far ends are moved in.
   * @param {string[]} callIds two established calls @param {{stream?: MediaStream}} [o]
   * @returns {Promise<object>} conferenceStarted's payload {callId, room, callIds}
   */
  async conference(callIds, o = {}) {
    const c = this.#new('c-' + Date.now().toString(36) + Math.random().toString(36).slice(2, 10), 'outbound', 'new', { peer: 'conference' });
    try {
      const sdp = await this.#offer(c, o.stream);
      this.#state(c, 'calling');
      return (await this.#req('conference', { callIds, callId: c.callId, sdp }, 0)).payload;
    } catch (e) {
      throw (this.#end(c, e), e);
    }
  }

  /** Set-up timing of a call (also after it ended). @returns {Timing | undefined} */
  timing(callId) {
    const t = this.#t.get(callId);
    return t && { ...t };
  }

  /** A small summary of pc.getStats(): the selected candidate pair, RTT, packets, jitter, loss, levels. */
  async stats(callId) {
    const r = await this.#get(callId).pc.getStats(), s = {};
    let sel, pair;
    r.forEach((x) => x.type == 'transport' && x.selectedCandidatePairId && (sel = x.selectedCandidatePairId));
    const cand = (id) => (id = r.get(id)) && { type: id.candidateType, address: id.address ?? id.ip, port: id.port, protocol: id.protocol };
    r.forEach((x) => {
      const t = x.type;
      if (t == 'candidate-pair' && (sel ? x.id == sel : x.nominated && x.state == 'succeeded')) pair = x;
      if (x.kind != 'audio' && t != 'track') return;
      if (t == 'outbound-rtp') s.packetsSent = x.packetsSent;
      if (t == 'inbound-rtp')
        Object.assign(s, { packetsReceived: x.packetsReceived, jitter: x.jitter, packetsLost: x.packetsLost }),
          x.audioLevel != null && (s.audioLevel = x.audioLevel);
      if (t == 'track' && x.remoteSource) s.audioLevel ??= x.audioLevel;
      if (t == 'media-source') s.localAudioLevel = x.audioLevel;
    });
    if (pair) (s.local = cand(pair.localCandidateId)), (s.remote = cand(pair.remoteCandidateId)), (s.currentRoundTripTime = pair.currentRoundTripTime);
    return s;
  }

  // ---- internals ----

  #get(callId) {
    const c = this.calls.get(callId);
    if (!c) throw fail('no_such_call', 'no call ' + callId);
    return c;
  }

  #new(callId, direction, state, x) {
    const c = { callId, direction, state, pc: null, stream: null, audio: null, muted: false, held: false, t: { t0: now() }, ...x };
    c.accepted = new Promise((a, b) => ((c.res = a), (c.rej = b)));
    c.accepted.catch(() => {});
    this.#t.set(callId, c.t);
    this.calls.set(callId, c);
    this.#state(c, state);
    return c;
  }

  #state(c, s) {
    c.state = s;
    this.#emit('callstate', c);
  }

  #ms(c) {
    return Math.round(now() - c.t.t0);
  }

  /** Microphone and a new RTCPeerConnection with its remote <audio>. */
  async #media(c, stream) {
    c.own = !stream;
    c.stream = stream || (await navigator.mediaDevices.getUserMedia({ audio: true }));
    if (c.state == 'ended') throw (this.#drop(c), fail('cancelled', 'the call ended'));
    const o = this.o, f = o.audioElement, pc = (c.pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: o.bundlePolicy }));
    const a = (c.audio = typeof f == 'function' ? f(c) : document.createElement('audio'));
    a.autoplay = true;
    a.muted = false;
    if (!a.parentNode) (f?.append ? f : document.body).append(a);
    pc.ontrack = (e) => {
      a.srcObject = e.streams[0] || new MediaStream([e.track]);
      a.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState == 'connected') c.t.connectedMs ??= this.#ms(c);
      this.#emit('callstate', c);
    };
    return pc;
  }

  /** The microphone tracks: added to the pc (with codec preferences) if `add`, enabled unless muted or held. */
  #tracks(c, add) {
    const pc = c.pc, want = this.o.codecs, caps = want && RTCRtpReceiver.getCapabilities?.('audio')?.codecs;
    for (const t of c.stream?.getAudioTracks() || []) {
      if (add) pc.addTrack(t, c.stream);
      t.enabled = !(c.muted || c.held);
    }
    if (add && caps) {
      const list = want.flatMap((w) => caps.filter((x) => x.mimeType.toLowerCase() == 'audio/' + w.toLowerCase()));
      for (const t of pc.getTransceivers())
        try {
          t.setCodecPreferences(list);
        } catch (e) {
          warn(e);
        }
    }
  }

  async #offer(c, stream) {
    await this.#media(c, stream);
    this.#tracks(c, 1);
    return this.#local(c);
  }

  /**
   * setLocalDescription, then bounded ICE gathering: ready iceGraceMs after the first
   * candidate, when gathering completes, or after iceCapMs at the latest.
   */
  async #local(c) {
    const pc = c.pc, o = this.o, t0 = now();
    let done, grace;
    const ready = new Promise((r) => (done = r)), cap = setTimeout(done, o.iceCapMs);
    const go = () => (grace ||= setTimeout(done, o.iceGraceMs));
    pc.onicecandidate = (e) => e.candidate?.candidate && ((c.ic = 1), go());
    pc.onicegatheringstatechange = () => pc.iceGatheringState == 'complete' && done();
    await pc.setLocalDescription();
    // Complete: ready now. A re-offer while the first gathering still runs gets no new candidates.
    if (pc.iceGatheringState == 'complete') done();
    else if (c.ic) go();
    await ready;
    clearTimeout(cap);
    clearTimeout(grace);
    c.t.gatherMs ??= Math.round(now() - t0);
    if (c.state == 'ended') throw (this.#drop(c), fail('cancelled', 'the call ended'));
    c.offerReadyMs = c.t.offerReadyMs ??= this.#ms(c);
    return pc.localDescription.sdp;
  }

  async #accepted(c, p) {
    c.t.answeredMs = this.#ms(c);
    this.#state(c, 'active');
    const sdp = p.sdp || c.early;
    try {
      if (c.direction == 'outbound') await c.pc.setRemoteDescription({ type: 'answer', sdp });
      c.res(p);
    } catch (e) {
      c.rej(e);
      this.hangup(c.callId).catch(warn);
    }
  }

  /** The far end's re-INVITE: answer it at once. */
  async #update(c, sdp) {
    try {
      await c.pc.setRemoteDescription({ type: 'offer', sdp });
      await this.#req('updateAnswer', { callId: c.callId, sdp: await this.#local(c) });
    } catch (e) {
      warn(e);
    }
  }

  async #dir(callId, type, dir) {
    const c = this.#get(callId), pc = c.pc, tr = pc?.getTransceivers()[0], old = tr?.direction;
    if (!tr) throw fail('invalid_state', 'call not established', type);
    tr.direction = dir;
    try {
      const { payload: p } = await this.#req(type, { callId, sdp: await this.#local(c) }, LONG);
      await (p.sdp ? pc.setRemoteDescription({ type: 'answer', sdp: p.sdp }) : pc.setLocalDescription({ type: 'rollback' }));
      c.held = type == 'hold';
      this.#tracks(c);
      this.#state(c, c.held ? 'held' : 'active');
      return p;
    } catch (e) {
      if (pc.signalingState == 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' }).catch(warn), (tr.direction = old);
      throw e;
    }
  }

  /** Releases the call's media: pc, own microphone, audio element. */
  #drop(c) {
    c.pc?.close();
    if (c.own) c.stream?.getTracks().forEach((t) => t.stop());
    if (c.audio) (c.audio.srcObject = null), typeof this.o.audioElement != 'function' && c.audio.remove();
  }

  #end(c, p, emit) {
    this.#drop(c);
    if (c.state == 'ended') return;
    this.calls.delete(c.callId);
    c.reason = p.reason || p.message;
    c.rej(p instanceof Error ? p : fail(p.code ?? 'ended', c.reason));
    this.#state(c, 'ended');
    if (emit) this.#emit('callEnded', p);
  }
}
