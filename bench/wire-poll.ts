/**
 * The bench's long-polling client: one keep-alive socket per poller (as a
 * browser holds one), a hand-written GET of `<path>/poll?topics=…&since=…`,
 * and a count of the event frames in each complete answer. Polls again at
 * once with the answer's cursor, as the browser client does.
 */
import { Agent, get } from 'node:http'

export interface PollWireOptions {
  port: number
  topics: string[]
  onEvent: () => void
  onClose?: () => void
}

const EVENT = '{"op":"event"'

/** Start polling; resolves once the first answer (where each topic starts) came, rejects on a refusal. */
export function openPoll(o: PollWireOptions): Promise<{ destroy(): void }> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  let stopped = false
  let cursor: string | undefined
  let session: string | undefined
  const topics = encodeURIComponent(o.topics.join(','))
  return new Promise((resolve, reject) => {
    let ready = false
    const handle = { destroy: () => { stopped = true; agent.destroy() } }
    const once = (): void => {
      if (stopped) return
      const path = `/realtime/poll?topics=${topics}${cursor === undefined ? '' : `&since=${cursor}`}${session === undefined ? '' : `&session=${session}`}`
      get({ host: '127.0.0.1', port: o.port, path, agent }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => {
          if (res.statusCode !== 200) {
            if (!ready) reject(new Error(`poll refused: ${res.statusCode} ${body.slice(0, 80)}`))
            else o.onClose?.()
            return
          }
          // Counted without parsing the frames, as the SSE client counts its messages.
          for (let i = body.indexOf(EVENT); i >= 0; i = body.indexOf(EVENT, i + EVENT.length)) o.onEvent()
          const head = JSON.parse(body.slice(0, body.indexOf(',"frames":')) + '}') as { cursor: string; session?: string }
          cursor = head.cursor
          session = head.session
          if (!ready) {
            ready = true
            resolve(handle)
          }
          once()
        })
      }).on('error', (err) => {
        if (!ready) reject(err)
        else if (!stopped) o.onClose?.()
      })
    }
    once()
  })
}
