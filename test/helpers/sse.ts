/** A raw SSE reader for tests (no EventSource): every message parsed, frames decoded. */
import { get, type IncomingMessage } from 'node:http'

export interface Message { id?: string; data?: string; comment?: string; retry?: string }

export class Stream {
  readonly messages: Message[] = []
  ended = false
  private buf = ''
  constructor(readonly res: IncomingMessage) {
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => {
      this.buf += chunk
      let i: number
      while ((i = this.buf.indexOf('\n\n')) >= 0) {
        const block = this.buf.slice(0, i)
        this.buf = this.buf.slice(i + 2)
        const m: Message = {}
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) m.comment = line.slice(1).trim()
          else {
            const c = line.indexOf(': ')
            ;(m as Record<string, string>)[line.slice(0, c)] = line.slice(c + 2)
          }
        }
        this.messages.push(m)
      }
    })
    res.on('close', () => { this.ended = true })
  }
  /** Protocol frames, without the heartbeat (see beats()). */
  frames(): Array<Record<string, unknown>> {
    return this.messages.filter((m) => m.data !== undefined).map((m) => JSON.parse(m.data!) as Record<string, unknown>).filter((f) => f.op !== 'pong')
  }
  /** Heartbeat messages (`{"op":"pong"}`, without an id), the first of them sent at once and naming the session. */
  beats(): Message[] {
    return this.messages.filter((m) => m.data !== undefined && (JSON.parse(m.data) as { op: string }).op === 'pong')
  }
  /** The session the stream's first frame names (for `POST <path>/collab`). */
  session(): string | undefined {
    return (this.beats()[0] === undefined ? undefined : (JSON.parse(this.beats()[0]!.data!) as { session?: string }).session)
  }
  async until(pred: (s: Stream) => boolean, what: string, timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!pred(this)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; have ${JSON.stringify(this.messages)}`)
      await new Promise((r) => setTimeout(r, 5))
    }
  }
  close(): void {
    this.res.destroy()
  }
}


export function openStream(url: string, headers: Record<string, string> = {}): Promise<Stream> {
  return new Promise((resolve, reject) => {
    get(url, { headers }, (res) => resolve(new Stream(res))).on('error', reject)
  })
}
