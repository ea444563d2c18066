// The chat page (index.html) and the admin dashboard (admin.html), built into dist/ and served by chatgate
// under /ui/ (src/chatgate/api/web.py). No inline script or style: the pages run under a strict CSP.
import { resolve } from "node:path";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsInlineLimit: 0, // no data: URLs for assets: every file is served, hashed, by chatgate
    modulePreload: { polyfill: false }, // every browser the page supports has modulepreload
    target: "es2022",
    rollupOptions: {
      input: { chat: resolve(import.meta.dirname, "index.html"), admin: resolve(import.meta.dirname, "admin.html") },
    },
  },
});
