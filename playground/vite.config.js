// Builds the two pages the tidings binary embeds: the demo chat client (index.html, served at
// `/`) and GraphiQL (playground.html, served at `/playground` and to browsers at `/graphql`).
//
// The output is committed (dist/) and must be reproducible: `scripts/check-playground.sh`
// rebuilds it and fails when it differs. File names carry content hashes only, so identical
// sources give identical bytes, and the server can cache `/assets/*` for a year.
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));

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
      },
    },
  },
  server: {
    // `npm run dev` next to `cargo run`: the API stays on the server.
    proxy: {
      "/graphql": { target: "http://127.0.0.1:8000", ws: true },
    },
  },
});
