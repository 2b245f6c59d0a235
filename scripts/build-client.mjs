// Bundle the browser client with esbuild:
//   dist/client.mjs     ESM for bundlers (readable)
//   dist/client.min.js  ESM, minified: what <path>/client.js serves to pages without a bundler
// and print its minified and gzipped sizes.
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const common = { entryPoints: [`${root}lib/client/index.ts`], bundle: true, format: 'esm', target: 'es2020', platform: 'browser', legalComments: 'none' }

await build({ ...common, outfile: `${root}dist/client.mjs` })
await build({ ...common, outfile: `${root}dist/client.min.js`, minify: true })
const code = readFileSync(`${root}dist/client.min.js`)
console.log(`client: ${code.length} bytes minified, ${gzipSync(code, { level: 9 }).length} bytes gzipped (dist/client.min.js)`)
