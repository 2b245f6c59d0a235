/**
 * Is Redis answering? Every command is raced against its own timer
 * (node-redis drops a command's timeout once it is written to the socket);
 * one that times out marks the link stalled, and the node delivers locally
 * until a liveness probe is answered again. The probe also learns Redis's
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
  /** Redis clock minus ours, in ms. */
  clockOffset = 0
  timeouts = 0
  private lastEcho = Date.now()
  private beats = 0
  private readonly timer: NodeJS.Timeout

  constructor(private readonly host: LivenessHost, readonly beatChannel: string, private readonly commandTimeoutMs: number, private readonly livenessMs: number) {
    this.timer = setInterval(() => void this.probe(), livenessMs)
    this.timer.unref()
  }

  /** Our beat came back on the subscriber connection. */
  readonly echo = (): void => {
    this.lastEcho = Date.now()
  }

  /** `p`, or a rejection after `commandTimeoutMs` (which marks the link stalled). */
  timed<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.timeouts++
        if (!this.stalled) log('Redis did not answer within %d ms: delivering locally until it does', this.commandTimeoutMs)
        this.stalled = true
        reject(new Error(`Redis did not answer within ${this.commandTimeoutMs} ms`))
      }, this.commandTimeoutMs)
      p.then((v) => { clearTimeout(t); resolve(v) }, (err: unknown) => { clearTimeout(t); reject(err as Error) })
    })
  }

  stop(): void {
    clearInterval(this.timer)
  }

  private async probe(): Promise<void> {
    const cmd = this.host.cmd
    if (this.host.closed || !cmd.isReady) return
    const t0 = Date.now()
    try {
      const [sec, usec] = await this.timed(cmd.sendCommand(['TIME'])) as [string, string]
      const t1 = Date.now()
      this.clockOffset = Number(sec) * 1000 + Math.floor(Number(usec) / 1000) - (t0 + t1) / 2
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
