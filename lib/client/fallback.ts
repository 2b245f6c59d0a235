/**
 * The fallback ladder below the WebSocket: Server-Sent Events, then long
 * polling, then manual refresh. Each step down is taken by itself, for a
 * reason the page is told (and the server, once, in its diagnostics):
 *
 * - SSE → poll when the stream shows no first frame within
 *   `firstFrameMs`, or loses its heartbeat (`buffering_proxy`: something
 *   on the way holds streamed responses, e.g. nginx `gzip_types
 *   text/event-stream` or an antivirus HTTPS scanner), or is refused by
 *   something other than our server (`stream_failed`);
 * - poll → manual refresh when polls do not complete either
 *   (`poll_failed`); the loop keeps trying, slower, and the page goes back
 *   to `fallback` when one does.
 *
 * A held SSE stream is probed again in the background (a throwaway stream
 * whose frames are ignored) with a doubling backoff; when its first frame
 * arrives, polling stops and the real stream resumes every topic from the
 * cursors polling reached. The WebSocket above is probed by the client's
 * own retry loop. Only one transport ever carries events, so none is seen
 * twice.
 */
import { refusal, reportDiagnosis } from './http'
import { PollTransport } from './transports/poll'
import { SseTransport, type Watch } from './transports/sse'
import type { EventSourceCtor, FetchLike } from './types'
import type { StepDownCause, WireConfig, WireTransport } from './wire'

export type HttpTransport = 'sse' | 'poll'

export interface LadderHost {
  readonly ES: EventSourceCtor | undefined
  readonly fetch: FetchLike
  readonly base: string
  /** How long a new stream may take to show its first frame (default 5 s), and the first wait before a held one is probed again (15 s, doubling up to MAX_PROBE_MS). */
  readonly timing: { firstFrameTimeoutMs?: number; streamProbeMs?: number }
  topics(): string[]
  cursorOf(topic: string): string | undefined
  ticket: (() => Promise<string | null>) | undefined
  /** `t` carries the events now (or would: nothing is subscribed). */
  carrying(t: HttpTransport): void
  frame(data: unknown): void
  /** The transport in use failed for now and retries. */
  lost(): void
  /** The server asked for `ms` before the next attempt (`Retry-After`). */
  holdOff(ms: number): void
  /** Stepped down from `from` to `to` (`null`: nothing is left, manual refresh) because of `cause`. */
  stepped(s: { from: HttpTransport; to: HttpTransport | null; cause: StepDownCause }): void
  /** Tell the server's diagnostics why (once per cause and client). */
  readonly report: boolean
  signedOut(reason: string): void
  /** The transport announced a new session for presence and locks (`undefined`: none now). */
  session(id: string | undefined): void
}

const MAX_PROBE_MS = 5 * 60_000
/** Polls failed in a row, without an answer, before the page is told to refresh. */
const POLL_FAILURES = 2
const PONG = '{"op":"pong"'

export class Ladder {
  private readonly sse: SseTransport | undefined
  private readonly poll: PollTransport
  private rungs: WireTransport[] = []
  private current: HttpTransport | null = null
  /** The rung in use delivered: it carries. */
  private carried = false
  private sseDownUntil = 0
  private probeMs = 0
  private probeTimer: ReturnType<typeof setTimeout> | undefined
  private probe: SseTransport | undefined
  private told = false
  private readonly reported = new Set<StepDownCause>()
  /** Where this tab's presence and lock requests go while an HTTP transport carries (see server transports/http-collab.ts). */
  private sessionId: string | undefined

  constructor(private readonly host: LadderHost) {
    const ES = host.ES
    const common = { topics: () => host.topics(), cursorOf: (t: string) => host.cursorOf(t), ticket: host.ticket }
    this.sse = ES === undefined ? undefined : new SseTransport({
      ...common,
      ES,
      // An unwatched stream (an older server sends no first frame) carries once open.
      opened: () => this.watch() === undefined && this.carry('sse'),
      frame: (data) => {
        this.carry('sse')
        if (typeof data === 'string' && data.startsWith(PONG)) {
          // The stream's first frame names its session; a heartbeat names none.
          const id = sessionOf(data)
          if (id !== undefined) this.announce(id)
        } else host.frame(data)
      },
      failed: (how, url, errored) => void this.sseFailed(how, url, errored === true),
    })
    this.poll = new PollTransport({
      ...common,
      fetch: host.fetch,
      opened: (session) => {
        this.carry('poll')
        if (session !== undefined) this.announce(session)
      },
      frame: (f) => host.frame(f),
      failed: (n) => {
        if (n < POLL_FAILURES || this.told) return
        this.told = true
        this.carried = false
        this.stepped('poll', null, 'poll_failed')
      },
      signedOut: (reason) => host.signedOut(reason),
    })
  }

  /** Take the transports `cfg` offers; false when none can run here. */
  offer(cfg: WireConfig): boolean {
    const listed = cfg.transports?.filter((t) => t.transport !== 'websocket')
    // A server before `transports` offers the stream alone, unwatched (it sends no first frame).
    this.rungs = listed ?? (cfg.fallback === null ? [] : [{ transport: 'sse', url: cfg.fallback.url, heartbeatMs: 0 }])
    if (this.sse === undefined) this.rungs = this.rungs.filter((t) => t.transport !== 'sse')
    return this.rungs.length > 0
  }

  get offered(): boolean {
    return this.rungs.length > 0
  }

  /** A transport exists (opening or open). */
  get active(): boolean {
    return this.sse?.active === true || this.poll.active
  }

  /** A transport delivers. */
  get open(): boolean {
    return this.current !== null && this.carried
  }

  /** The transport in use, or the one that would be. */
  get transport(): HttpTransport | null {
    return this.current ?? (this.rungs[0]?.transport as HttpTransport | undefined) ?? null
  }

  /** (Re)start on the highest rung not known to be held, resuming every topic from its cursor. */
  start(): void {
    this.stopRungs()
    const rung = this.rungs.find((r) => r.transport !== 'sse' || Date.now() >= this.sseDownUntil)
    if (rung !== undefined) this.run(rung)
  }

  close(): void {
    this.stopRungs()
    clearTimeout(this.probeTimer)
    this.probeTimer = undefined
    this.probe?.close()
    this.probe = undefined
  }

  /** Send a presence or lock frame for this tab (dropped when no session is known: `session()` makes the client rejoin). */
  post(frame: object, keepalive = false): void {
    const id = this.sessionId
    if (id === undefined) return
    void (async () => {
      const ticket = this.host.ticket === undefined ? undefined : await this.host.ticket()
      if (ticket === null) return
      const url = new URL('collab', this.host.base)
      url.searchParams.set('session', id)
      if (ticket !== undefined) url.searchParams.set('ticket', ticket)
      // text/plain: no CORS preflight, and app body parsers leave it alone.
      await this.host.fetch(url.href, {
        method: 'POST', body: JSON.stringify(frame), headers: { 'Content-Type': 'text/plain;charset=UTF-8' }, credentials: 'same-origin', keepalive,
      })
    })().catch(() => undefined) // a lost request is resent by the rejoin after the next session
  }

  get session(): string | undefined {
    return this.sessionId
  }

  private announce(id: string): void {
    if (id === this.sessionId) return
    this.sessionId = id
    this.host.session(id)
  }

  private stopRungs(): void {
    if (this.sessionId !== undefined) {
      this.sessionId = undefined
      this.host.session(undefined)
    }
    this.sse?.close()
    this.poll.close()
    this.current = null
    this.carried = false
    this.told = false
  }

  private run(rung: WireTransport): void {
    this.current = rung.transport as HttpTransport
    if (rung.transport === 'poll') {
      if (!this.poll.start(rung.url, this.host.base, rung.holdMs)) this.carry('poll')
      return
    }
    void this.sse!.start(rung.url, this.host.base, this.watch()).then((any) => { if (!any && this.current === 'sse') this.carry('sse') })
  }

  private carry(t: HttpTransport): void {
    if (this.current !== t || this.carried) return
    this.carried = true
    this.told = false
    this.host.carrying(t)
  }

  private watch(): Watch | undefined {
    const r = this.rungs.find((t) => t.transport === 'sse')
    return r === undefined || r.heartbeatMs === 0 ? undefined : { firstFrameMs: this.host.timing.firstFrameTimeoutMs ?? 5000, heartbeatMs: r.heartbeatMs }
  }

  private async sseFailed(how: 'spent' | 'refused' | 'retrying' | 'held', url: string, errored: boolean): Promise<void> {
    this.carried = false
    if (how === 'held') return this.stepDown(errored ? 'stream_failed' : 'buffering_proxy')
    if (how !== 'refused') return this.host.lost()
    // EventSource hides the status of a refused stream: ask once, so a 401 means signed out rather than endless retries.
    const r = await refusal(this.host.fetch, url)
    if (this.current !== 'sse') return
    if (r?.status === 401) return this.host.signedOut('unauthenticated')
    this.host.lost()
    if (r?.status === 503) return this.host.holdOff(r.retryAfterMs)
    // Our own refusals (full, forbidden) hold for polling too; anything else may be the way there.
    if (r !== null && r.status !== 429 && r.status !== 403) this.stepDown('stream_failed')
  }

  private stepDown(cause: StepDownCause): void {
    this.probeMs = Math.min(this.probeMs === 0 ? this.host.timing.streamProbeMs ?? 15_000 : this.probeMs * 2, MAX_PROBE_MS)
    this.sseDownUntil = Date.now() + this.probeMs
    const next = this.rungs.find((r) => r.transport === 'poll')
    this.stepped('sse', next === undefined ? null : 'poll', cause)
    this.stopRungs()
    if (next === undefined) return
    this.run(next)
    this.scheduleProbe()
  }

  private stepped(from: HttpTransport, to: HttpTransport | null, cause: StepDownCause): void {
    this.host.stepped({ from, to, cause })
    if (this.reported.has(cause) || !this.host.report) return
    this.reported.add(cause)
    // `<path>/diagnostics`, beside the config URL the client was given.
    reportDiagnosis(this.host.fetch, new URL('diagnostics', this.host.base).href, { cause }, to ?? 'none')
  }

  /** Try a throwaway stream once the backoff is over; its first frame means the way is clear again. */
  private scheduleProbe(): void {
    clearTimeout(this.probeTimer)
    this.probeTimer = setTimeout(() => {
      const rung = this.rungs.find((r) => r.transport === 'sse')
      if (rung === undefined || this.current !== 'poll' || this.sse === undefined) return
      const probe: SseTransport = new SseTransport({
        ES: this.host.ES!,
        topics: () => this.host.topics(),
        cursorOf: () => undefined,
        ticket: this.host.ticket,
        opened: () => undefined,
        frame: () => {
          probe.close()
          if (this.probe !== probe) return
          this.probe = undefined
          this.probeMs = 0
          this.sseDownUntil = 0
          if (this.current === 'poll') this.start()
        },
        failed: () => {
          probe.close()
          if (this.probe !== probe) return
          this.probe = undefined
          this.probeMs = Math.min(this.probeMs * 2, MAX_PROBE_MS)
          this.scheduleProbe()
        },
      })
      this.probe = probe
      // Nothing subscribed, nothing to probe with: ask again later.
      void probe.start(rung.url, this.host.base, this.watch()).then((any) => { if (!any && this.probe === probe) { this.probe = undefined; this.scheduleProbe() } })
    }, this.probeMs)
  }
}

/** The session a stream's first frame names; `undefined` for a heartbeat, or a frame mangled on the way. */
function sessionOf(data: string): string | undefined {
  try {
    const id = (JSON.parse(data) as { session?: unknown }).session
    return typeof id === 'string' ? id : undefined
  } catch {
    return undefined
  }
}
