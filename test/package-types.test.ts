/**
 * The published types resolve under every `moduleResolution` an app may use
 * (issue #9, bug 5): `node` (node10, which ignores `exports`; Strapi and many
 * apps generate it), `node16` and `bundler`. Checked with TypeScript 5 (an
 * npm alias: TypeScript 7 no longer has node10) against the built `dist/`,
 * as an app that installed the package would see it.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = join(__dirname, '..')
const tsc5 = join(root, 'node_modules', 'typescript5', 'bin', 'tsc')

const CONSUMER = `
import { createRealtime, type RealtimeOptions } from 'cms-realtime'
import { realtime as koa, type KoaRealtime } from 'cms-realtime/koa'
import { realtime as express, type ExpressRealtime } from 'cms-realtime/express'
import { RedisBus, type RedisBusOptions } from 'cms-realtime/redis'
import { createClient, type RealtimeClient } from 'cms-realtime/client'
import { registerMetrics, type MetricsOptions } from 'cms-realtime/prometheus'
interface Editor { id: string; role: string }
const k: KoaRealtime<Editor> = koa({ authenticate: (): Editor | null => null, authorize: (user, topic) => user.role === topic })
const e: ExpressRealtime = express()
const o: RealtimeOptions = {}
const b: RedisBusOptions = { commandTimeoutMs: 500 }
const m: MetricsOptions = { prefix: 'cms_' }
export const used = [k, e, o, b, m, createRealtime, RedisBus, createClient as unknown as RealtimeClient, () => registerMetrics(k, m)]
`

function check(dir: string, resolution: 'node' | 'node16' | 'bundler', source: string): { status: number | null; out: string } {
  const module = resolution === 'node' ? 'commonjs' : resolution === 'node16' ? 'node16' : 'esnext'
  writeFileSync(join(dir, 'consumer.ts'), source)
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, skipLibCheck: true, module, moduleResolution: resolution, types: [], ignoreDeprecations: '5.0' },
    files: ['consumer.ts'],
  }))
  const r = spawnSync(process.execPath, [tsc5, '-p', dir], { encoding: 'utf8', timeout: 60_000 })
  return { status: r.status, out: r.stdout + r.stderr }
}

let dir: string
beforeAll(() => {
  // CI builds before testing; a fresh checkout may not have dist/ yet.
  if (!existsSync(join(root, 'dist', 'adapters', 'koa.d.ts'))) execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'ignore' })
  dir = mkdtempSync(join(tmpdir(), 'cms-realtime-types-'))
  mkdirSync(join(dir, 'node_modules'))
  symlinkSync(root, join(dir, 'node_modules', 'cms-realtime'), 'dir')
}, 120_000)
afterAll(() => rmSync(dir, { recursive: true, force: true }))

test.each(['node', 'node16', 'bundler'] as const)('every entry point and its types resolve under moduleResolution %s', (resolution) => {
  const r = check(dir, resolution, CONSUMER)
  expect({ status: r.status, out: r.out }).toEqual({ status: 0, out: '' })
}, 60_000)

test('the check can fail: an entry point that does not exist is reported', () => {
  const r = check(dir, 'node', `import { x } from 'cms-realtime/nope'\nexport const y = x\n`)
  expect(r.status).not.toBe(0)
  expect(r.out).toMatch(/cms-realtime\/nope/)
}, 60_000)
