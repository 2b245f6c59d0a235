/**
 * Is Redis answering? Every command has its own timer (node-redis drops a
 * command's timeout once it is written to the socket); one that is past its
 * deadline while Redis has said nothing for `commandTimeoutMs` marks the
 * link stalled, and the node delivers locally until a liveness probe is
 * answered again. A Redis that answers, however far behind, is load. The probe also learns Redis's
 * clock (publish deadlines are in Redis time) and checks that the
 * subscriber connection still hears this node's own beats.
 */
import debug from 'debug'
import type { RedisConnectionLike } from './redis-options'

const log = debug('cms-realtime:redis')

export interface LivenessHost {
  readonly cmd: RedisConnectionLike
  readonly closed: boolean
  /** Redis answers again (or gap markers still wait to be written): record and read back what was missed. */
  recover(): void
  /** Gap markers are waiting. */
  readonly dirty: boolean
  /** The subscriber connection hears nothing: read every topic's stream instead. */
  catchUp(): void
}

export class Liveness {
  /** A command timed out: until a probe answers, Redis counts as unreachable. */
  stalled = false
  /** Redis clock minus ours, in ms, and how far off that may be. */
  clockOffset = 0
  private clockError = 0
  private readonly samples: Array<{ offset: number; error: number }> = []
  timeouts = 0
  /** Replies that came after their timer had fired. */
  lateReplies = 0
  private lastEcho = Date.now()
  /** When Redis last answered a timed command on the command connection. */
  private lastReply = 0
  private beats = 0
  private readonly timer: NodeJS.Timeout

  private readonly window: Window

  constructor(
    private readonly host: LivenessHost, readonly beatChannel: string, private readonly commandTimeoutMs: number, private readonly livenessMs: number, maxInFlight = 256,
  ) {
    this.window = new Window(maxInFlight)
    this.timer = setInterval(() => void this.probe(), livenessMs)
    this.timer.unref()
  }

  /** Our beat came back on the subscriber connection. */
  readonly echo = (): void => {
    this.lastEcho = Date.now()
  }

  /**
   * `send()` once there is room among the commands in flight, then timed
   * (see `timed`) from when it is sent. A command that waits
   * for room is neither sent nor timed: under load (a bulk import) Redis
   * answers, only later, and a timer started behind thousands of queued
   * commands would take that for a stall. While the link is stalled,
   * nothing waits: it fails at once (the caller goes local).
   */
  async send<T>(send: (timed: <R>(p: Promise<R>) => Promise<R>) => Promise<T>): Promise<T> {
    if (this.stalled) throw new Error('Redis is not answering')
    await this.window.enter()
    try {
      if (this.stalled) throw new Error('Redis is not answering')
      // Each command `send` makes in its slot has its own timer (a script Redis lacks costs a second round trip).
      return await send((p) => this.timed(p))
    } finally {
      this.window.leave()
    }
  }

  /** Commands waiting for room, and the most that ever waited (under load: backpressure, not a fault). */
  get queued(): number {
    return this.window.waiting
  }

  /**
   * `p`, or a rejection once the command is past its deadline and Redis has
   * said nothing at all for `commandTimeoutMs` (which marks the link
   * stalled). Replies on one connection come in order, so a reply to
   * anything since means Redis is working through our commands: load, and
   * the wait goes on (a publish script past its deadline then answers
   * `expired` by itself). Giving up only after the deadline, plus the clock
   * estimate's error, is what makes a publish's id true: a script that runs
   * later refuses to. The check runs after the loop has read its sockets:
   * timers run first, and a loop held up past the deadline (a busy process,
   * a starved CPU) would otherwise find the reply waiting, unread.
   * `ofCommands` false: a reply on the subscriber connection, which says
   * nothing of the command connection.
   */
  timed<T>(p: Promise<T>, ofCommands = true): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let late = false
      let settled = false
      const check = (): void => {
        const due = Date.now()
        setImmediate(() => {
          if (settled) return
          const quiet = Date.now() - this.lastReply
          if (ofCommands && quiet < this.commandTimeoutMs) {
            t = setTimeout(check, this.commandTimeoutMs - quiet)
            return
          }
          late = true
          this.timeouts++
          if (!this.stalled) log('Redis said nothing for %d ms: delivering locally until it answers (last reply %d ms ago, sockets read %d ms after the timer)', this.commandTimeoutMs, quiet, Date.now() - due)
          this.stalled = true
          reject(new Error(`Redis did not answer within ${this.commandTimeoutMs} ms`))
        })
      }
      let t = setTimeout(check, this.commandTimeoutMs + this.clockError + 5)
      p.then((v) => {
        settled = true
        clearTimeout(t)
        if (ofCommands) this.lastReply = Date.now()
        if (late) this.lateReplies++
        resolve(v)
      }, (err: unknown) => { settled = true; clearTimeout(t); reject(err as Error) })
    })
  }

  stop(): void {
    clearInterval(this.timer)
  }

  /**
   * Redis's clock from the recent probe with the shortest round trip (as
   * NTP does): a reply read late by a busy loop would put the offset off by
   * half the delay, and with it every publish deadline.
   */
  private clock(redisMs: number, t0: number, t1: number): void {
    this.samples.push({ offset: redisMs - (t0 + t1) / 2, error: Math.ceil((t1 - t0) / 2) })
    if (this.samples.length > 16) this.samples.shift()
    let best = this.samples[0]!
    for (const s of this.samples) if (s.error < best.error) best = s
    this.clockOffset = best.offset
    this.clockError = best.error
  }

  private async probe(): Promise<void> {
    const cmd = this.host.cmd
    if (this.host.closed || !cmd.isReady) return
    const t0 = Date.now()
    try {
      const [sec, usec] = await this.timed(cmd.sendCommand(['TIME'])) as [string, string]
      const t1 = Date.now()
      this.clock(Number(sec) * 1000 + Math.floor(Number(usec) / 1000), t0, t1)
      const wasStalled = this.stalled
      this.stalled = false
      if (wasStalled) log('Redis answers again')
      // Also retry gap markers a failed recovery could not write.
      if (wasStalled || this.host.dirty) this.host.recover()
      // The subscriber connection must hear our beats; if not, read the streams instead.
      await this.timed(cmd.sendCommand(['PUBLISH', this.beatChannel, String(++this.beats)]))
      if (Date.now() - this.lastEcho > 3 * this.livenessMs) {
        log('the subscriber connection hears nothing: reading the streams')
        this.host.catchUp()
      }
    } catch {
      // `timed` marked the link stalled; the next probe tries again.
    }
  }
}

/**
 * At most `max` commands in flight, the rest waiting in order. A freed slot
 * is handed straight to the oldest waiter, so a command that arrives
 * meanwhile cannot overtake it: publishes of one topic reach Redis in the
 * order they were made.
 */
class Window {
  private inFlight = 0
  private readonly queue: Array<() => void> = []

  constructor(private readonly max: number) {}

  get waiting(): number {
    return this.queue.length
  }

  enter(): Promise<void> | undefined {
    if (this.inFlight < this.max && this.queue.length === 0) {
      this.inFlight++
      return undefined
    }
    return new Promise<void>((resolve) => this.queue.push(resolve))
  }

  leave(): void {
    const next = this.queue.shift()
    if (next !== undefined) next() // the slot passes on: inFlight stays
    else this.inFlight--
  }
}
