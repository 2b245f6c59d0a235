/**
 * Real reverse proxies from Debian's packages (Apache, HAProxy, Caddy; nginx
 * is in nginx.ts), each started by a test on a loopback port with a config it
 * writes into a temp dir, in the foreground, and stopped by the test. No
 * system instance is touched. Apache refuses to run its workers as root:
 * they run as www-data, so the temp dir is made readable to it.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, startNginx, type Nginx } from './nginx'

export const BINARIES = { nginx: '/usr/sbin/nginx', apache: '/usr/sbin/apache2', haproxy: '/usr/sbin/haproxy', caddy: '/usr/bin/caddy' } as const
export const missing = Object.values(BINARIES).filter((b) => !existsSync(b))

export type Proxy = Nginx

/** Start `bin args…` with `conf` written to `file` in a fresh dir; resolve once `port` accepts connections. */
async function start(
  name: string, bin: string, file: string, conf: (dir: string, port: number) => string, args: (dir: string) => string[], env: (dir: string) => NodeJS.ProcessEnv = () => ({}),
): Promise<Proxy> {
  const dir = mkdtempSync(join(tmpdir(), `cms-realtime-${name}-`))
  chmodSync(dir, 0o755)
  const port = await freePort()
  writeFileSync(join(dir, file), conf(dir, port))
  let output = ''
  const child: ChildProcess = spawn(bin, args(dir), { env: { ...process.env, ...env(dir) }, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()))
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const deadline = Date.now() + 10_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited: ${output}${readLog(dir)}`)
    if (await accepts(port)) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`${name} did not start listening: ${output}`)
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  return {
    port,
    base: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        const t = setTimeout(() => child.kill('SIGKILL'), 3000)
        await exited
        clearTimeout(t)
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

function readLog(dir: string): string {
  const log = join(dir, 'error.log')
  return existsSync(log) ? readFileSync(log, 'utf8') : ''
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
}

export { startNginx }

/** Apache with mod_proxy_http and `extra` (modules loaded by name, directives in the vhost). */
export function startApache(app: number, setup: { modules: string[]; directives: string }): Promise<Proxy> {
  const modules = ['mpm_event', 'authz_core', 'proxy', 'proxy_http', ...setup.modules]
  return start('apache', BINARIES.apache, 'httpd.conf', (dir, port) => `ServerRoot /usr/lib/apache2
DefaultRuntimeDir ${dir}
PidFile ${dir}/httpd.pid
ErrorLog ${dir}/error.log
LogLevel warn
${modules.map((m) => `LoadModule ${m}_module /usr/lib/apache2/modules/mod_${m}.so`).join('\n')}
User www-data
Group www-data
ServerName 127.0.0.1
Listen 127.0.0.1:${port}
<VirtualHost 127.0.0.1:${port}>
  ProxyPreserveHost On
${setup.directives.replaceAll('{{APP}}', String(app))}
</VirtualHost>
`, (dir) => ['-f', join(dir, 'httpd.conf'), '-DFOREGROUND'])
}

/** HAProxy in HTTP mode, `timeout tunnel` for upgraded connections. */
export function startHaproxy(app: number): Promise<Proxy> {
  return start('haproxy', BINARIES.haproxy, 'haproxy.cfg', (_dir, port) => `global
  maxconn 256
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend editors
  bind 127.0.0.1:${port}
  default_backend cms
backend cms
  server app 127.0.0.1:${app}
`, (dir) => ['-f', join(dir, 'haproxy.cfg'), '-db'])
}

/** Caddy's `reverse_proxy`, plain HTTP on loopback, no admin endpoint, its state in the temp dir. */
export function startCaddy(app: number): Promise<Proxy> {
  return start('caddy', BINARIES.caddy, 'Caddyfile', (_dir, port) => `{
  admin off
  auto_https off
}
http://127.0.0.1:${port} {
  reverse_proxy 127.0.0.1:${app}
}
`, (dir) => ['run', '--config', join(dir, 'Caddyfile'), '--adapter', 'caddyfile'],
  (dir) => ({ HOME: dir, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'config') }))
}
