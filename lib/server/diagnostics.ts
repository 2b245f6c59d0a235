/**
 * Why did a browser's WebSocket fail? The browser cannot tell: through a
 * header-stripping proxy Chromium reports only `error` and close 1006. So
 * the client puts a one-time nonce on the WebSocket URL, the server records
 * what it saw for that nonce (a stripped upgrade, a refusal and its reason,
 * an accepted handshake, or nothing at all) and the client asks over plain
 * HTTP. The client then reports its conclusion once, so `stats()` shows
 * operators how many editors fall back and why.
 *
 *   GET  <path>/diagnostics?nonce=N   → HandshakeSeen (read once)
 *   POST <path>/diagnostics           ← {"cause": DiagnosisCause, "transport": "sse" | "poll" | "none", "nonce"?: N}
 *
 * Anyone can POST, so a report counts only as far as the server can vouch
 * for it. A report that names the nonce of a handshake the server saw fail
 * is counted in `diagnoses` under what the server saw (not what the report
 * claims), once per nonce, and is never rate-limited: a spoofer cannot
 * guess a browser's nonce, so it can neither forge nor silence that count.
 * Any other report (the handshake never reached the server, an older
 * client) goes to `diagnosesUnconfirmed`, rate-limited per client address.
 * A POST without `Origin` is refused: browsers always send it on a POST.
 */
import debug from 'debug'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import { sendJson } from './http'
import { causeOf, DIAGNOSIS_CAUSES, NONCE, STEP_DOWN_CAUSES, type DiagnosisCause, type HandshakeSeen, type StepDownCause } from '../client/wire'

export interface DiagnosticsOptions {
  /** Nonces remembered at once; the oldest is forgotten first. Default 10000. */
  maxEntries?: number
  /** How long a nonce's record is kept. Default 60000. */
  ttlMs?: number
  /** Reports accepted per second from one client (address), on average. Default 0.1. */
  reportsPerSecond?: number
  /** Reports accepted from one client in one burst. Default 10. */
  reportBurst?: number
  /** Nonce records one client may cause per second, on average (a browser makes one per handshake). Default 5. */
  recordsPerSecond?: number
  /** Nonce records one client may cause in one burst. Default 100. */
  recordBurst?: number
}

/** Largest report body, in bytes. */
const MAX_BODY = 1024
const TRANSPORTS = new Set(['sse', 'poll', 'none'])
const log = debug('cms-realtime')
const CAUSES = new Set<string>(DIAGNOSIS_CAUSES)
const STEP_DOWNS = new Set<string>(STEP_DOWN_CAUSES)

interface Entry {
  seen: HandshakeSeen
  expires: number
}

export class Diagnostics {
  /** Insertion-ordered, and every entry lives `ttlMs`: the oldest is always first. */
  private readonly entries = new Map<string, Entry>()
  /** Nonce and client of each handshake socket not yet answered. */
  private readonly sockets = new WeakMap<Duplex, { nonce: string; client: string }>()
  private readonly maxEntries: number
  private readonly ttlMs: number
  /** Per client, not one global bucket: a spoofer must not lock real browsers out. */
  private readonly reportLimit: PerClientLimit
  private readonly recordLimit: PerClientLimit
  /** Reports the server's own record of the handshake confirms, by the cause that record stands for. */
  readonly reports: Partial<Record<DiagnosisCause, number>> = {}
  /** Reports the server cannot vouch for (no nonce, or one it has no record of), by the cause they claim. */
  readonly unconfirmed: Partial<Record<DiagnosisCause, number>> = {}
  /** Step-down reports (a held stream: `buffering_proxy`), by cause: the browser's word, rate-limited like `unconfirmed`. */
  readonly stepDowns: Partial<Record<StepDownCause, number>> = {}
  /** Records already read by the client, kept until its report names them (or they expire). */
  private readonly read = new Map<string, Entry>()
  /** Reports refused as malformed or over the rate limit. */
  rejected = 0

  constructor(options: DiagnosticsOptions = {}) {
    this.maxEntries = options.maxEntries ?? 10_000
    this.ttlMs = options.ttlMs ?? 60_000
    this.reportLimit = new PerClientLimit(options.reportsPerSecond ?? 0.1, options.reportBurst ?? 10)
    this.recordLimit = new PerClientLimit(options.recordsPerSecond ?? 5, options.recordBurst ?? 100)
  }

  /** A handshake for our path began on `socket`: remember its nonce, if it has one. */
  watch(req: IncomingMessage, socket: Duplex): void {
    const nonce = nonceOf(req.url)
    if (nonce !== undefined) this.sockets.set(socket, { nonce, client: req.socket.remoteAddress ?? '' })
  }

  refused(socket: Duplex, refusal: { status: number; reason: string; headers?: Record<string, string> }): void {
    // A browser cannot read a refused WebSocket's headers: the wait asked for travels in the record.
    const after = Number(refusal.headers?.['Retry-After'])
    this.settle(socket, Number.isFinite(after) && after > 0
      ? { seen: 'refused', reason: refusal.reason, status: refusal.status, retryAfterMs: after * 1000 }
      : { seen: 'refused', reason: refusal.reason, status: refusal.status })
  }

  accepted(socket: Duplex): void {
    this.settle(socket, { seen: 'accepted' })
  }

  /** A plain GET on the WebSocket path, with WebSocket headers and a nonce: by default, a proxy stripped our client's upgrade. */
  stripped(req: IncomingMessage, client: string, seen: HandshakeSeen = { seen: 'stripped_upgrade' }): void {
    const nonce = nonceOf(req.url)
    if (nonce !== undefined) this.record(nonce, seen, client)
  }

  /** What was seen for `nonce`; each record is read once (and kept for the report that names it). */
  lookup(nonce: string): HandshakeSeen {
    const entry = this.entries.get(nonce)
    if (entry === undefined || entry.expires < Date.now()) return { seen: 'nothing' }
    this.entries.delete(nonce)
    this.keep(this.read, nonce, entry)
    return entry.seen
  }

  /** `<path>/diagnostics`. */
  async handle(
    req: IncomingMessage, res: ServerResponse, url: string, parsedBody: () => unknown = () => undefined, client = req.socket.remoteAddress ?? '',
  ): Promise<void> {
    const method = req.method ?? 'GET'
    if (method === 'GET' || method === 'HEAD') {
      const nonce = new URL(url, 'http://x').searchParams.get('nonce')
      if (nonce === null || !NONCE.test(nonce)) return sendJson(res, 400, { error: 'bad_nonce', reason: 'nonce must be 16-64 characters of A-Z a-z 0-9 _ -' })
      return sendJson(res, 200, this.lookup(nonce))
    }
    if (method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed', reason: 'use GET or POST' }, { Allow: 'GET, HEAD, POST' })
    if (req.headers.origin === undefined) {
      this.rejected++
      return sendJson(res, 403, { error: 'origin_required', reason: 'a report comes from a browser page, which sends Origin' })
    }
    // A body parser mounted before us may have read the stream already: then
    // take what it parsed rather than an empty body.
    const body = req.readableEnded ? parsedBody() : await readBody(req, MAX_BODY)
    if (body === null) {
      this.rejected++
      return sendJson(res, 413, { error: 'too_large', reason: `a report is at most ${MAX_BODY} bytes` })
    }
    const report = parseReport(body)
    if (report === null) {
      this.rejected++
      return sendJson(res, 400, {
        error: 'bad_report',
        reason: `expected {"cause": one of ${[...DIAGNOSIS_CAUSES, ...STEP_DOWN_CAUSES].join(', ')}, "transport": "sse" | "poll" | "none"}`,
      })
    }
    if (STEP_DOWNS.has(report.cause)) {
      // Nothing on the server's side can confirm a stream that did not arrive.
      if (!this.reportLimit.take(client)) {
        this.rejected++
        return sendJson(res, 429, { error: 'rate_limited', reason: 'too many reports; try again later' }, { 'Retry-After': '60' })
      }
      const cause = report.cause as StepDownCause
      this.stepDowns[cause] = (this.stepDowns[cause] ?? 0) + 1
      log('a browser stepped down from its event stream: %s (now on %s)', cause, report.transport)
      return void res.writeHead(204, { 'Cache-Control': 'no-store' }).end()
    }
    const record = report.nonce === undefined ? undefined : this.take(report.nonce)
    if (record !== undefined) {
      const cause = causeOf(record)
      this.reports[cause] = (this.reports[cause] ?? 0) + 1
    } else {
      if (!this.reportLimit.take(client)) {
        this.rejected++
        return sendJson(res, 429, { error: 'rate_limited', reason: 'too many reports; try again later' }, { 'Retry-After': '60' })
      }
      const cause = report.cause as DiagnosisCause
      this.unconfirmed[cause] = (this.unconfirmed[cause] ?? 0) + 1
    }
    res.writeHead(204, { 'Cache-Control': 'no-store' }).end()
  }

  /** The failed handshake's record for a report, consumed: one count per handshake. */
  private take(nonce: string): HandshakeSeen | undefined {
    const now = Date.now()
    for (const map of [this.read, this.entries]) {
      const e = map.get(nonce)
      if (e === undefined) continue
      map.delete(nonce)
      if (e.expires >= now) return e.seen
    }
    return undefined
  }

  private settle(socket: Duplex, seen: HandshakeSeen): void {
    const watched = this.sockets.get(socket)
    if (watched === undefined) return
    this.sockets.delete(socket)
    this.record(watched.nonce, seen, watched.client)
  }

  private record(nonce: string, seen: HandshakeSeen, client: string): void {
    if (!this.recordLimit.take(client)) return
    this.keep(this.entries, nonce, { seen, expires: Date.now() + this.ttlMs })
  }

  /** Insert into an expiry-ordered, bounded map: expired and over-the-bound entries go first. */
  private keep(map: Map<string, Entry>, nonce: string, entry: Entry): void {
    const now = Date.now()
    for (const [key, e] of map) {
      if (e.expires >= now && map.size < this.maxEntries) break
      map.delete(key)
    }
    map.delete(nonce) // re-inserted last, keeping the order by expiry
    map.set(nonce, entry)
  }

}

/** Token buckets per client address, at most `maxClients` of them (the least recently refilled are forgotten first). */
class PerClientLimit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>()

  constructor(private readonly rate: number, private readonly burst: number, private readonly maxClients = 10_000) {}

  take(client: string): boolean {
    const now = Date.now()
    const b = this.buckets.get(client)
    let tokens = this.burst
    if (b !== undefined) {
      tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate)
      this.buckets.delete(client) // re-inserted last: the map stays ordered by use
    } else if (this.buckets.size >= this.maxClients) {
      this.buckets.delete(this.buckets.keys().next().value!)
    }
    const ok = tokens >= 1
    this.buckets.set(client, { tokens: ok ? tokens - 1 : tokens, at: now })
    return ok
  }
}

function nonceOf(url: string | undefined): string | undefined {
  const q = url?.indexOf('?') ?? -1
  if (q < 0) return undefined
  const nonce = new URLSearchParams(url!.slice(q + 1)).get('nonce')
  return nonce !== null && NONCE.test(nonce) ? nonce : undefined
}

/** A report from the raw body text, or from what a body parser made of it. */
function parseReport(body: unknown): { cause: DiagnosisCause | StepDownCause; transport: string; nonce?: string } | null {
  let v: unknown = body
  if (typeof body === 'string') {
    try {
      v = JSON.parse(body)
    } catch {
      return null
    }
  }
  if (typeof v !== 'object' || v === null) return null
  const { cause, transport } = v as Record<string, unknown>
  if (typeof cause !== 'string' || !(CAUSES.has(cause) || STEP_DOWNS.has(cause))) return null
  if (typeof transport !== 'string' || !TRANSPORTS.has(transport)) return null
  const nonce = (v as Record<string, unknown>).nonce
  if (nonce !== undefined && (typeof nonce !== 'string' || !NONCE.test(nonce))) return null
  const c = cause as DiagnosisCause | StepDownCause
  return nonce === undefined ? { cause: c, transport } : { cause: c, transport, nonce }
}

/** The body as text, or `null` once it passes `max` bytes (the rest is not read). */
export function readBody(req: IncomingMessage, max: number): Promise<string | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    const done = (v: string | null) => {
      req.off('data', onData)
      resolve(v)
    }
    const onData = (c: Buffer) => {
      size += c.length
      if (size > max) return done(null)
      chunks.push(c)
    }
    req.on('data', onData)
    req.once('end', () => done(Buffer.concat(chunks).toString('utf8')))
    req.once('error', () => done(null))
    // A client that goes away mid-body: no 'end' would ever come.
    req.once('close', () => done(null))
  })
}
