/**
 * Request/reply over the IPC channel of a forked bench process: the runner
 * drives the server and client processes with small JSON messages.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'

interface Request { id: number; cmd: string; args: unknown }
interface Reply { id: number; ok: boolean; value?: unknown; error?: string }

export class Peer {
  private next = 1
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  private exited = false

  constructor(readonly name: string, readonly child: ChildProcess) {
    child.on('message', (m: Reply) => {
      const w = this.waiting.get(m.id)
      if (w === undefined) return
      this.waiting.delete(m.id)
      if (m.ok) w.resolve(m.value)
      else w.reject(new Error(`${name}: ${m.error ?? 'failed'}`))
    })
    child.on('exit', (code, signal) => {
      this.exited = true
      for (const w of this.waiting.values()) w.reject(new Error(`${name} exited (${code ?? signal})`))
      this.waiting.clear()
    })
  }

  call<T>(cmd: string, args: unknown = {}, timeoutMs = 120_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} has exited`))
    const id = this.next++
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiting.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v as T) },
        reject: (e) => { clearTimeout(timer); reject(e) },
      })
      this.child.send({ id, cmd, args } satisfies Request)
    })
  }

  /** Ask politely, then kill what we started if it lingers. */
  async stop(): Promise<void> {
    if (this.exited) return
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()))
    this.child.send({ id: 0, cmd: 'exit', args: {} } satisfies Request)
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000)
    await gone
    clearTimeout(timer)
  }
}

/** Fork a bench process (TypeScript through tsx). */
export function spawn(name: string, file: string, args: string[], nodeFlags: string[] = []): Peer {
  const child = fork(join(__dirname, file), args, {
    execArgv: ['--import', 'tsx', ...nodeFlags],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  return new Peer(name, child)
}

/** In a bench process: answer the runner's requests with `handlers`. */
export function serve(handlers: Record<string, (args: never) => unknown>): void {
  process.on('message', (m: Request) => {
    if (m.cmd === 'exit') {
      process.exit(0)
    }
    const handler = handlers[m.cmd]
    Promise.resolve()
      .then(() => {
        if (handler === undefined) throw new Error(`unknown command ${m.cmd}`)
        return handler(m.args as never)
      })
      .then(
        (value) => process.send!({ id: m.id, ok: true, value } satisfies Reply),
        (err: unknown) => process.send!({ id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies Reply),
      )
  })
}
