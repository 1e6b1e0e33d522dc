// Validate an AsyncAPI document with the official parser (the same rules as `asyncapi validate`).
// Usage: node validate-asyncapi.mjs docs/asyncapi.yaml   -> exit 0 when valid, 1 with the problems.
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: node validate-asyncapi.mjs FILE");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"), { source: path });
const problems = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning);
for (const d of [...problems, ...warnings]) {
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  console.log(`${d.severity === DiagnosticSeverity.Error ? "error" : "warning"} ${d.code} at ${where}: ${d.message}`);
}
if (!document || problems.length) {
  console.log(`${path}: invalid (${problems.length} errors)`);
  process.exit(1);
}
console.log(`${path}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.messages().length} messages, ${warnings.length} warnings`);
