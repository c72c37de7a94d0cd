// Builds the pages the tidings binary embeds: the demo chat client (index.html, served at
// `/`), GraphiQL (playground.html, served at `/playground` and to browsers at `/graphql`) and
// the operator console (admin.html, served at `/admin`).
//
// The output is committed (dist/) and must be reproducible: `scripts/check-playground.sh`
// rebuilds it and fails when it differs. File names carry content hashes only, so identical
// sources give identical bytes, and the server can cache `/assets/*` for a year.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

/**
 * Libraries go in chunks of their own, apart from the pages' code. A chunk's hash covers the
 * names of the chunks it imports, so if GraphiQL's libraries imported from the page's chunk,
 * every edit to the page would rename (and recommit) megabytes of unchanged editor code.
 * Monaco and Prettier stay where Rollup puts them: they load lazily.
 */
function chunkOf(id) {
  if (id.includes("vite/preload-helper")) return "preload-helper";
  if (!id.includes("/node_modules/") || id.includes("/node_modules/vite/")) return undefined;
  // The chat uses graphql-ws's client only; its server half (which needs graphql-js) stays
  // with GraphiQL, whose toolkit imports the whole package.
  if (/\/node_modules\/graphql-ws\/dist\/(client|common)/.test(id)) return "graphql-ws";
  if (/\/node_modules\/(monaco-editor|monaco-graphql|prettier)\//.test(id)) return undefined;
  return "graphiql-vendor";
}

export default defineConfig({
  root,
  base: "/",
  // Nothing is copied verbatim: every file the pages use goes through the bundler and gets a
  // hashed name.
  publicDir: false,
  esbuild: { jsx: "automatic", legalComments: "none" },
  worker: { format: "es" },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    // GraphiQL's editor (Monaco) is large by nature; it only loads on the playground page.
    chunkSizeWarningLimit: 4096,
    rollupOptions: {
      input: {
        chat: resolve(root, "index.html"),
        playground: resolve(root, "playground.html"),
        admin: resolve(root, "admin.html"),
      },
      output: { manualChunks: chunkOf },
    },
  },
  server: {
    // `npm run dev` next to `cargo run`: the API stays on the server.
    proxy: {
      "/graphql": { target: "http://127.0.0.1:8000", ws: true },
    },
  },
});
