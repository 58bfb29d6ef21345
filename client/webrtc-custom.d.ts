// Type declarations for webrtc-custom.js, the browser client of the WebRTC-to-SIP
// gateway's JSON protocol (docs/CUSTOM_SIGNALING_PROTOCOL.md, version 1).

export interface GatewayOptions {
  /** Default []. Replaced by `registered.payload.iceServers` when the gateway sends them. */
  iceServers?: RTCIceServer[];
  /** Default 'balanced'. */
  bundlePolicy?: RTCBundlePolicy;
  /** How long to wait for more ICE candidates after the first one, ms. Default 150, so that the
   * `call` frame leaves within 300 ms of dial even when a STUN server never answers. */
  iceGraceMs?: number;
  /** Longest wait for ICE candidates after setLocalDescription, ms. Default 2000. */
  iceCapMs?: number;
  /** Reply timeout of short requests, ms. Default 10000. `register`, `hold`, `resume`, `dtmf` and
   * `transfer` wait 60000 ms; `call` and `conference` wait for their final reply without a timeout. */
  requestTimeoutMs?: number;
  /** Interval of the keep-alive `ping`, ms. Default 20000. A ping without a reply drops and reconnects. */
  pingIntervalMs?: number;
  /** Reconnect back-off: baseMs * 2^attempt, capped at maxMs, with jitter (50-100 %). Default {baseMs: 500, maxMs: 30000}. */
  reconnect?: { baseMs?: number; maxMs?: number };
  /** Where each call's remote `<audio autoplay>` goes: a container element (default document.body),
   * or a factory returning the element (the library then does not remove it when the call ends). */
  audioElement?: HTMLElement | ((call: Call) => HTMLAudioElement);
  /** Codec preferences applied with RTCRtpTransceiver.setCodecPreferences, in order; null to leave
   * the browser's. Default ['PCMU', 'PCMA', 'telephone-event'] (the gateway's default GW_CODECS). */
  codecs?: string[] | null;
}

export type ConnectionState = 'connecting' | 'open' | 'closed' | 'reconnecting';

/** 'new': preparing the offer (nothing sent yet); 'calling': `call` sent; 'ringing'; 'early': early media
 * (progress); 'incoming': an incomingCall ringing here; 'answering': `answer` being prepared or sent;
 * 'active': established; 'held': put on hold by this side; 'ended'. */
export type CallState = 'new' | 'calling' | 'ringing' | 'early' | 'incoming' | 'answering' | 'active' | 'held' | 'ended';

/** Set-up timing, in ms since t0 (dial for outbound calls, the answer for inbound ones). */
export interface Timing {
  /** performance.now() at the start. */
  t0: number;
  /** Time spent waiting for ICE candidates during the set-up. */
  gatherMs?: number;
  /** The offer (outbound) or answer (inbound) was ready and its frame sent. */
  offerReadyMs?: number;
  /** callAccepted received. */
  answeredMs?: number;
  /** pc.connectionState reached 'connected' (ICE + DTLS). */
  connectedMs?: number;
}

export interface Call {
  callId: string;
  direction: 'outbound' | 'inbound';
  state: CallState;
  /** The number called, or the caller's `from` (untrusted text). */
  peer: string;
  /** The caller's display name (inbound, untrusted text). */
  displayName?: string;
  /** The incomingCall's SDP offer (inbound). */
  offer?: string;
  pc: RTCPeerConnection | null;
  /** The microphone stream. */
  stream: MediaStream | null;
  /** The remote audio element. */
  audio: HTMLAudioElement | null;
  muted: boolean;
  held: boolean;
  offerReadyMs?: number;
  /** Why the call ended (callEnded/callFailed reason, 'disconnected', or a local error). */
  reason?: string;
  t: Timing;
  /** Resolves with callAccepted's payload (after the remote answer is applied); rejects with a
   * GatewayError on callFailed (code = SIP status, reason = e.g. 'busy'), an error, or the end of the call. */
  accepted: Promise<CallAcceptedPayload>;
}

/** Rejection of a request: the gateway's `error` (code e.g. 'invalid_state'), or 'timeout' / 'closed'. */
export interface GatewayError extends Error {
  code: string | number;
  reason?: string;
  requestType?: string;
}

export interface CallAcceptedPayload { callId: string; sdp: string; codecs: string[] }
export interface RegisteredPayload {
  dn: string; expires: number; server: string; version: string; protocol: number; resumeToken: string;
  iceServers?: RTCIceServer[];
}

/** After a dropped connection the library sends `attach` by itself; this is its reply. */
export interface AttachedPayload {
  dn: string; resumeToken: string; replayed: number; lost: number;
  calls: { callId: string; direction: 'outbound' | 'inbound'; state: string; peer: string }[];
}

export interface CandidateInfo { type?: RTCIceCandidateType; address?: string; port?: number; protocol?: string }

export interface CallStats {
  local?: CandidateInfo;
  remote?: CandidateInfo;
  /** Seconds. */
  currentRoundTripTime?: number;
  packetsSent?: number;
  packetsReceived?: number;
  /** Seconds. */
  jitter?: number;
  packetsLost?: number;
  /** Remote audio level, 0..1. */
  audioLevel?: number;
  /** Microphone level, 0..1. */
  localAudioLevel?: number;
}

export interface MessageDetail {
  direction: 'in' | 'out';
  /** The parsed frame (undefined for an incoming frame that is not JSON). */
  frame: { type: string; id?: string; payload?: Record<string, any> } | undefined;
  /** The frame's text as on the wire. */
  text: string;
}

export interface GatewayClientEventMap {
  state: CustomEvent<{ state: ConnectionState }>;
  message: CustomEvent<MessageDetail>;
  /** A call changed (state, mute, media connection); also when it ended (state 'ended'). */
  callstate: CustomEvent<Call>;
  registered: CustomEvent<RegisteredPayload>;
  /** The session (registration and calls) was taken over again after a dropped connection. */
  attached: CustomEvent<AttachedPayload>;
  unregistered: CustomEvent<{ dn: string }>;
  pong: CustomEvent<{ time: number }>;
  error: CustomEvent<{ code: string; reason: string; requestType?: string }>;
  ringing: CustomEvent<{ callId: string }>;
  progress: CustomEvent<{ callId: string; sdp: string }>;
  callAccepted: CustomEvent<CallAcceptedPayload>;
  callFailed: CustomEvent<{ callId: string; code: number; reason: string }>;
  /** Also sent by the library itself, with reason 'disconnected', for the calls of a lost connection. */
  callEnded: CustomEvent<{ callId: string; by: 'local' | 'remote'; reason?: string }>;
  incomingCall: CustomEvent<{ callId: string; from: string; displayName: string; sdp: string }>;
  callCancelled: CustomEvent<{ callId: string; reason?: string }>;
  answeredElsewhere: CustomEvent<{ callId: string }>;
  held: CustomEvent<{ callId: string; sdp: string }>;
  resumed: CustomEvent<{ callId: string; sdp: string }>;
  updateOffer: CustomEvent<{ callId: string; sdp: string }>;
  updated: CustomEvent<{ callId: string; sdp?: string }>;
  dtmfSent: CustomEvent<{ callId: string; digits: string }>;
  dtmfReceived: CustomEvent<{ callId: string; digit: string; durationMs: number }>;
  transferAccepted: CustomEvent<{ callId: string }>;
  transferProgress: CustomEvent<{ callId: string; status: number; reason: string }>;
  transferRequested: CustomEvent<{ callId: string; target: string }>;
  conferenceStarted: CustomEvent<{ callId: string; room: string; callIds: string[] }>;
}

export class GatewayClient extends EventTarget {
  constructor(url: string, options?: GatewayOptions);
  readonly url: string;
  /** The options with their defaults filled in. */
  readonly o: Required<Omit<GatewayOptions, 'audioElement'>> & Pick<GatewayOptions, 'audioElement'>;
  /** ICE servers used for new calls (options, or the gateway's `registered.payload.iceServers`). */
  iceServers: RTCIceServer[];
  /** The calls that are not over, by callId. */
  readonly calls: Map<string, Call>;
  readonly state: ConnectionState;
  readonly registered: boolean;
  /** The DN of the last registration. */
  readonly dn: string | null;

  /** Opens the WebSocket (subprotocol 'sip') and keeps it open until close(), reconnecting with
   * back-off. After a drop it first resumes the session with `attach` (calls stay up, missed events
   * are replayed); if the gateway no longer has it, the calls end ('disconnected') and it
   * re-registers with the last credentials. Resolves once open. */
  connect(): Promise<void>;
  /** Closes for good: unregisters first, so the gateway ends the calls at once. */
  close(): void;

  register(dn: string, password: string, displayName?: string): Promise<RegisteredPayload>;
  unregister(): Promise<{ dn: string }>;

  /** Resolves once the `call` frame is sent; `call.accepted` settles on callAccepted / callFailed.
   * `referredBy` agrees to a transferRequested of that call. */
  call(to: string, options?: { stream?: MediaStream; referredBy?: string }): Promise<Call>;
  /** Resolves with callAccepted's payload. On failure the call keeps ringing (state 'incoming'). */
  answer(callId: string, options?: { stream?: MediaStream }): Promise<CallAcceptedPayload>;
  reject(callId: string, code?: 486 | 480 | 603): Promise<{ callId: string; by: 'local'; reason: string }>;
  /** Ends the call in any phase; it is removed locally whatever the reply. */
  hangup(callId: string, reason?: string): Promise<{ callId: string; by: 'local'; reason: string } | void>;
  /** Re-offer with transceiver.direction 'sendonly'; the microphone is disabled while held. */
  hold(callId: string): Promise<{ callId: string; sdp: string }>;
  /** Re-offer with 'sendrecv'. */
  resume(callId: string): Promise<{ callId: string; sdp: string }>;
  /** Microphone track.enabled = false; nothing is signalled. */
  mute(callId: string, on?: boolean): void;
  unmute(callId: string): void;
  sendDtmf(callId: string, digits: string, durationMs?: number): Promise<{ callId: string; digits: string }>;
  /** Blind transfer to a number, or attended transfer replacing another established call. */
  transfer(callId: string, to: string | { replacesCallId: string }): Promise<{ callId: string }>;
  /** Three-way call through the gateway's bridge: a new leg (its own callId) is placed, then both
   * far ends are moved in. */
  conference(callIds: [string, string], options?: { stream?: MediaStream }): Promise<{ callId: string; room: string; callIds: string[] }>;
  /** Set-up timing of a call, also after it ended. */
  timing(callId: string): Timing | undefined;
  /** A summary of pc.getStats() for an established call. */
  stats(callId: string): Promise<CallStats>;

  addEventListener<K extends keyof GatewayClientEventMap>(type: K, listener: (ev: GatewayClientEventMap[K]) => any, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof GatewayClientEventMap>(type: K, listener: (ev: GatewayClientEventMap[K]) => any, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
