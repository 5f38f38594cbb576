// Validates a render's custom resources (KEDA's, the Prometheus Operator's) against their CRDs'
// schemas, as published in the @kubernetes-models packages (deploy/check-deploy.sh; the Kubernetes
// validator knows only the built-in kinds). Usage: node validate_crds.mjs MODULES FILE, where
// MODULES is the node_modules holding those packages and FILE a JSON array of objects. Exits 1
// naming every object that does not validate, or whose kind it does not know.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PACKAGES = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1/index.js",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/index.js",
};

const [modules, file] = process.argv.slice(2);
let failed = 0;
for (const object of JSON.parse(readFileSync(file, "utf8"))) {
  const name = `${object.kind}/${object.metadata?.name}`;
  const path = PACKAGES[object.apiVersion];
  const Model = path && (await import(pathToFileURL(join(modules, path)).href))[object.kind];
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
