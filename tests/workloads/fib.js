// fib: a Node workload whose CPU goes into JIT-compiled JavaScript (fibonacci, hotLoop); run
// with --perf-basic-prof so V8 writes /tmp/perf-<pid>.map naming that code.
// Usage: node --perf-basic-prof fib.js <seconds>
function fibonacci(n) {
  return n < 2 ? n : fibonacci(n - 1) + fibonacci(n - 2);
}
function hotLoop(ms) {
  const end = Date.now() + ms;
  let x = 0;
  while (Date.now() < end) x += fibonacci(20);
  return x;
}
console.log(hotLoop(Number(process.argv[2] || 1) * 1000));
