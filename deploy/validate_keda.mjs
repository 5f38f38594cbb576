// Validates the KEDA objects of a render against KEDA's CRD schemas (deploy/check-deploy.sh; the
// Kubernetes validator knows only the built-in kinds). Usage: node validate_keda.mjs MODULES FILE
// where MODULES is the node_modules holding @kubernetes-models/keda and FILE a JSON array of
// objects. Exits 1 naming every object that does not validate, or one whose kind it does not know.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, file] = process.argv.slice(2);
const keda = await import(
  pathToFileURL(join(modules, "@kubernetes-models/keda/keda.sh/v1alpha1/index.js")).href
);
let failed = 0;
for (const object of JSON.parse(readFileSync(file, "utf8"))) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const Model = object.apiVersion === "keda.sh/v1alpha1" ? keda[object.kind] : undefined;
  if (!Model) {
    console.error(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${name}: valid`);
  } catch (err) {
    console.error(`${name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
