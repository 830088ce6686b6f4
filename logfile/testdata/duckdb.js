// Runs one SQL query with DuckDB and prints its rows as JSON objects.
// Usage: NODE_PATH=<.tools/node_modules> node duckdb.js "<sql>"
const { DuckDBInstance } = require('@duckdb/node-api');

(async () => {
  const inst = await DuckDBInstance.create(':memory:');
  const con = await inst.connect();
  const reader = await con.runAndReadAll(process.argv[2]);
  process.stdout.write(JSON.stringify(reader.getRowObjectsJson()));
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
