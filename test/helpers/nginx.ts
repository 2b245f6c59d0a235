/**
 * A real nginx (Debian's package) started by a test on a loopback port, with
 * a config the test writes into a temp dir; stopped by the test. No system
 * nginx is touched: `-p` points every path (pid, logs, temp) into that dir.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export const NGINX = '/usr/sbin/nginx'
export const nginxAvailable = existsSync(NGINX)

export interface Nginx {
  port: number
  base: string
  stop(): Promise<void>
}

/** A free loopback port (bound, read, released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo
      s.close(() => resolve(port))
    })
  })
}

/**
 * Start nginx with `httpBlock` (the inside of `http { }`; `{{PORT}}` is
 * replaced by its listening port) and wait until it accepts connections.
 */
export async function startNginx(httpBlock: (port: number) => string): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), 'cms-realtime-nginx-'))
  const port = await freePort()
  const conf = `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
${httpBlock(port)}
}
`
  writeFileSync(join(dir, 'nginx.conf'), conf)
  const child: ChildProcess = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const deadline = Date.now() + 5000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nginx exited: ${readFileSync(join(dir, 'error.log'), 'utf8')}`)
    if (await accepts(port)) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error('nginx did not start listening')
    }
    await new Promise((r) => setTimeout(r, 20))
  }
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM') // fast shutdown: open connections are not waited for
        const t = setTimeout(() => child.kill('SIGKILL'), 2000)
        await exited
        clearTimeout(t)
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

/** The ```nginx block of the README (the recipe users copy). */
export function readmeRecipe(): string {
  const readme = readFileSync(join(__dirname, '..', '..', 'README.md'), 'utf8')
  const m = /```nginx\n([\s\S]*?)```/.exec(readme)
  if (m === null) throw new Error('README.md has no ```nginx block')
  return m[1]!
}
