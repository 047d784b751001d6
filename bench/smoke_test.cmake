# The benchmarks' smoke test (ctest bench_smoke), so they cannot rot: writes a
# tiny model with appliance-bench-model, loads it, then runs appliance-bench
# with small counts on stories260K and on that model, and checks that every
# figure of the JSON contract is there and positive. Timings are not checked.
#
#   cmake -DBENCH=... -DBENCH_MODEL=... -DRUNTIME=... -DSHARED_DIR=... -DWORK_DIR=... -P smoke_test.cmake

function(run_checked out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

function(check_positive json)
  string(JSON value ERROR_VARIABLE err GET "${json}" ${ARGN})
  if(err OR NOT value GREATER 0)
    message(FATAL_ERROR "appliance-bench JSON: '${ARGN}' is '${value}' (${err}), expected a positive number:\n${json}")
  endif()
endfunction()

file(MAKE_DIRECTORY "${WORK_DIR}")
set(tiny "${WORK_DIR}/bench-tiny.gguf")
run_checked(ignored "${BENCH_MODEL}" --out "${tiny}" --preset tiny --vocab-from "${SHARED_DIR}/models/stories260K.gguf")
run_checked(ignored "${RUNTIME}" generate --model "${tiny}" --prompt hi --max-tokens 8)

foreach(model "${SHARED_DIR}/models/stories260K.gguf" "${tiny}")
  run_checked(json "${BENCH}" --model "${model}" --json --threads 2 --pp 16 --tg 8 --runs 1 --bandwidth-mib 64)
  foreach(key pp512_tok_s tg128_tok_s bandwidth_gb_s ceiling_tok_s tg_ceiling_ratio model_bytes)
    check_positive("${json}" ${key})
  endforeach()
  foreach(jobs 1 4 8)
    check_positive("${json}" concurrent_tok_s ${jobs})
  endforeach()
endforeach()
