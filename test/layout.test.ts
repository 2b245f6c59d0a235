/**
 * The shape of lib/ (#17): no import cycles (type imports included: a cycle
 * of types is still two files that cannot be read apart), no file over 400
 * lines, the composition root well under 300, the browser client free of
 * Node modules, and the core free of Koa, Express and any CMS.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'

const LIB = join(__dirname, '..', 'lib')

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name)
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : []
  })
}

const all = files(LIB)
const rel = (p: string) => relative(LIB, p)

/** Relative imports of `file`, resolved to files under lib/. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8')
  const out: string[] = []
  for (const m of text.matchAll(/(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'/g)) {
    const base = resolve(dirname(file), m[1]!)
    const hit = [`${base}.ts`, join(base, 'index.ts')].find((c) => all.includes(c))
    if (hit !== undefined) out.push(hit)
  }
  return out
}

test('lib/ has no import cycles', () => {
  const graph = new Map(all.map((f) => [f, importsOf(f)]))
  const cycles: string[] = []
  const state = new Map<string, 'open' | 'done'>()
  const stack: string[] = []
  const visit = (f: string): void => {
    state.set(f, 'open')
    stack.push(f)
    for (const g of graph.get(f) ?? []) {
      if (state.get(g) === 'open') cycles.push([...stack.slice(stack.indexOf(g)), g].map(rel).join(' → '))
      else if (state.get(g) === undefined) visit(g)
    }
    stack.pop()
    state.set(f, 'done')
  }
  for (const f of all) if (state.get(f) === undefined) visit(f)
  expect(cycles).toEqual([])
})

test('no lib/ file is over 400 lines; the composition root is under 300', () => {
  const lines = (f: string) => readFileSync(f, 'utf8').replace(/\n$/, '').split('\n').length
  expect(all.filter((f) => lines(f) > 400).map((f) => `${rel(f)}: ${lines(f)}`)).toEqual([])
  expect(lines(join(LIB, 'server', 'realtime.ts'))).toBeLessThan(300)
})

test('the browser client imports no Node module; the core imports no framework or CMS', () => {
  const bad: string[] = []
  for (const f of all) {
    const text = readFileSync(f, 'utf8')
    const specifiers = [...text.matchAll(/from\s+'([^']+)'/g)].map((m) => m[1]!)
    if (rel(f).startsWith('client/') && specifiers.some((s) => s.startsWith('node:') || !s.startsWith('.'))) bad.push(`${rel(f)}: ${specifiers}`)
    const core = !rel(f).startsWith('adapters/') && !rel(f).startsWith('integrations/')
    if (core && specifiers.some((s) => /^(koa|express|@strapi\/|payload)/.test(s))) bad.push(`${rel(f)} imports a framework`)
  }
  expect(bad).toEqual([])
})
