/**
 * The bench's long-polling client, as cheap as the SSE one (wire-sse.ts): a
 * raw keep-alive TCP socket per poller (as a browser holds one), a
 * hand-written GET of `<path>/poll?topics=…&since=…&session=…`, the answer
 * read by its Content-Length, event frames counted without parsing them.
 * It polls again at once with the answer's cursor and session, as the
 * browser client does. Node's own HTTP client would cost the client process
 * more than the server spends, and the figures are the server's.
 */
import { connect } from 'node:net'

export interface PollWireOptions {
  port: number
  topics: string[]
  onEvent: () => void
  onClose?: () => void
}

const EVENT = Buffer.from('{"op":"event"')
const HEAD_END = Buffer.from('\r\n\r\n')
const HEAD = /"cursor":"([^"]*)","session":"([^"]*)"/

/** Start polling; resolves once the first answer (where each topic starts) came, rejects on a refusal. */
export function openPoll(o: PollWireOptions): Promise<{ destroy(): void }> {
  const topics = encodeURIComponent(o.topics.join(','))
  return new Promise((resolve, reject) => {
    const socket = connect(o.port, '127.0.0.1')
    socket.setNoDelay(true)
    let ready = false
    let buf: Buffer = Buffer.alloc(0)
    const send = (cursor?: string, session?: string): void => {
      const q = cursor === undefined ? '' : `&since=${cursor}&session=${session}`
      socket.write(`GET /realtime/poll?topics=${topics}${q} HTTP/1.1\r\nHost: 127.0.0.1:${o.port}\r\n\r\n`)
    }
    const fail = (err: Error): void => {
      if (ready) return void o.onClose?.()
      socket.destroy()
      reject(err)
    }
    socket.on('error', fail)
    socket.on('close', () => fail(new Error('closed before ready')))
    socket.on('connect', () => send())
    socket.on('data', (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
      for (;;) {
        const end = buf.indexOf(HEAD_END)
        if (end < 0) return
        const head = buf.toString('latin1', 0, end)
        const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? NaN)
        if (!head.startsWith('HTTP/1.1 200') || !Number.isFinite(length)) return fail(new Error(`poll refused: ${head.slice(0, 40)}`))
        if (buf.length < end + 4 + length) return
        const body = buf.subarray(end + 4, end + 4 + length)
        buf = buf.subarray(end + 4 + length)
        for (let i = body.indexOf(EVENT); i >= 0; i = body.indexOf(EVENT, i + EVENT.length)) o.onEvent()
        const m = HEAD.exec(body.toString('latin1', 0, 400))
        if (!ready) {
          ready = true
          resolve({ destroy: () => socket.destroy() })
        }
        send(m?.[1], m?.[2])
      }
    })
  })
}
