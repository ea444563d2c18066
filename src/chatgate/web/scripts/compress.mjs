// Pre-compresses the built files (gzip and brotli twins beside each one), so chatgate serves them by
// Accept-Encoding without compressing per request. Usage: node scripts/compress.mjs dist
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const COMPRESSIBLE = /\.(html|js|css|svg|json|txt|map)$/;

function* files(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* files(path);
    else if (COMPRESSIBLE.test(name)) yield path;
  }
}

for (const path of files(process.argv[2] ?? "dist")) {
  const body = readFileSync(path);
  writeFileSync(path + ".gz", gzipSync(body, { level: 9 }));
  writeFileSync(
    path + ".br",
    brotliCompressSync(body, {
      params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: body.length },
    }),
  );
}
