// appliance-image: builds the sealed appliance's image and boots it under QEMU.
//   appliance-image build --model M.gguf --key K.key --out DIR [...]
//   appliance-image run DIR [--jobs FILE] [--capture-nic PCAP [--expect-no-packets]] [--cpu MODEL] [...]
// See docs/architecture.md for the image layout, the output folder and the channel.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "image/build_defaults.h"
#include "image/image_builder.h"
#include "image/qemu_runner.h"
#include "image/runtime_config.h"

namespace {

using appliance::Status;
namespace img = appliance::image;

int Fail(const Status& s) {
  std::fprintf(stderr, "error: %s\n", s.message().c_str());
  return 1;
}

int RunBuild(img::BuildOptions options) {
  appliance::StatusOr<int64_t> epoch = img::ParseSourceDateEpoch(std::getenv("SOURCE_DATE_EPOCH"));
  if (!epoch.ok()) return Fail(epoch.status());
  options.created = *epoch;
  options.release = img::defaults::kRelease;
  auto start = std::chrono::steady_clock::now();
  appliance::StatusOr<img::BuildReport> report = img::BuildImage(options);
  if (!report.ok()) return Fail(report.status().Context("build"));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr,
               "wrote %s: %llu bytes, %zu files (%zu shared libraries, %zu kernel modules), level %s, "
               "manifest version %llu\n"
               "manifest sha256 %s, signed by key %s; %.2f s\n",
               report->initramfs.c_str(), static_cast<unsigned long long>(report->initramfs_bytes), report->files,
               report->libraries, report->modules, options.level.c_str(), static_cast<unsigned long long>(options.manifest_version),
               report->manifest_sha256.c_str(), report->key_id.c_str(), secs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"appliance-image: build the sealed appliance image and boot it under QEMU"};
  app.require_subcommand(1);

  img::BuildOptions build;
  build.init = img::defaults::kInit;
  build.runtime = img::defaults::kRuntime;
  build.kernel_dir = img::defaults::kKernelDir;
  build.level = img::defaults::kIntegrityLevel;
  build.manifest_version = img::defaults::kMinManifestVersion;
  CLI::App* b = app.add_subcommand("build", "gather files, sign the manifest, write DIR/initramfs.cpio and friends");
  b->add_option("--model", build.model, "the GGUF model to serve")->required();
  b->add_option("--key", build.key, "Ed25519 private signing key (PEM)")->required();
  b->add_option("--cosign-key", "further signing key (repeatable): one more signature each")
      ->type_name("KEY")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->each([&build](const std::string& key) { build.extra_keys.push_back(key); });
  b->add_option("--previous-manifest", build.previous_manifest,
                "the previous release's manifest.json (recorded by its sha256; the version must go up)");
  b->add_option("--source-commit", build.source_commit, "source commit for the manifest's build provenance "
                "(default: git HEAD at configure time)");
  b->add_option("--out", build.out_dir, "output folder (created if missing)")->required();
  b->add_option("--init", build.init, "appliance-init (static)")->capture_default_str();
  b->add_option("--runtime", build.runtime, "appliance-runtime")->capture_default_str();
  b->add_option("--kernel-dir", build.kernel_dir, "folder with vmlinuz (scripts/fetch-kernel)")->capture_default_str();
  b->add_option("--level", build.level, "integrity level L1..L4")->capture_default_str();
  b->add_option("--manifest-version", build.manifest_version, "manifest_version (rollback counter)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 53));
  b->add_option("--module", "kernel module to pack and have init load (repeatable; dependencies are added, built-ins skipped)")
      ->type_name("NAME")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->each([&build](const std::string& name) { build.modules.push_back(name); });
  b->add_option("--threads", build.threads, "runtime threads (runtime.json)")
      ->capture_default_str()
      ->check(CLI::Range(1u, img::kMaxRuntimeThreads));

  img::RunOptions run;
  double timeout = -1;
  CLI::App* r = app.add_subcommand("run", "boot an image folder under QEMU (TCG)");
  r->add_option("dir", run.image_dir, "image folder written by build")->required();
  r->add_option("--console-log", run.console_log, "console log file (default DIR/console.log)");
  r->add_flag("--console-stderr", run.console_stderr, "also copy the console to stderr as it arrives");
  r->add_option("--jobs", run.jobs_file,
                "batch mode: send each JSON line of FILE, print the replies, shut down; exit 0 only if all succeeded");
  r->add_option("--timeout", timeout, "give up (and kill QEMU) after SECONDS (default: 600 in batch mode, none otherwise)")
      ->check(CLI::Range(0.0, 1e7));
  r->add_option("--ready-timeout", run.ready_timeout_s, "batch mode: seconds to wait for the ready event")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  r->add_option("--memory", run.memory_mb, "guest memory in MiB")
      ->capture_default_str()
      ->check(CLI::Range(img::kMinMemoryMb, img::kMaxMemoryMb));
  r->add_option("--socket", run.socket_path, "channel socket path (default: a fresh temporary folder)");
  r->add_option("--qemu", run.qemu, "QEMU binary")->capture_default_str();
  r->add_option("--cpu", run.cpu, "QEMU CPU model (-cpu); the default, without AVX2, is the fastest measured under TCG "
                "(image/README.md, 'CPU model')")
      ->capture_default_str();
  CLI::Option* capture =
      r->add_option("--capture-nic", run.capture_nic,
                    "attach a virtio-net NIC (user-mode backend, restrict=on) and write every frame through it to "
                    "this pcap file; reports 'nic capture: N packets (FILE)' on stderr")
          ->type_name("PCAP");
  r->add_flag("--expect-no-packets", run.expect_no_packets,
              "with --capture-nic: exit 1 if the capture holds any packet or the guest never set the NIC up")
      ->needs(capture);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    if (b->parsed()) return RunBuild(build);
    if (r->parsed()) {
      if (timeout >= 0) {
        run.timeout_s = timeout;
      } else {
        run.timeout_s = run.jobs_file.empty() ? 0 : 600;
      }
      Status s = img::RunImage(run);
      if (!s.ok()) return Fail(s.Context("run"));
      return 0;
    }
  } catch (const std::exception& e) {
    // Nothing below main is expected to throw; an allocation failure might.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 2;
}
