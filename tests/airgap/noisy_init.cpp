// airgap_noisy_init: the positive control of the isolation proof. TEST-ONLY:
// never part of a release image (tests/airgap packs it with
// `appliance-image build --init` into a throwaway image).
//
// As PID 1 it does what the appliance must never do: it loads the image's
// kernel modules (the virtio NIC driver), brings eth0 up (which alone makes the
// kernel send IPv6 MLD reports, neighbour and router solicitations) and sends
// DHCP-discover-shaped UDP broadcasts to 255.255.255.255:67. Then it reports
// what the kernel says it transmitted and powers off. If the host's capture of
// this guest's NIC stays empty, the capture setup is broken.
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

constexpr const char* kConfig = "/etc/appliance/runtime.json";
constexpr const char* kInterface = "eth0";
constexpr int kBroadcasts = 3;

void Log(const std::string& message) {
  std::string line = "noisy-init: " + message + "\n";
  ssize_t ignored = ::write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

std::string Errno() { return std::strerror(errno); }

[[noreturn]] void PowerOff() {
  Log("power-off");
  ::sync();
  ::reboot(RB_POWER_OFF);
  Log("reboot(RB_POWER_OFF) failed: " + Errno());
  for (;;) ::pause();
}

// The console is opened by the kernel for PID 1 when /dev/console exists; make sure.
void EnsureConsole() {
  if (::fcntl(STDERR_FILENO, F_GETFD) != -1) return;
  int fd = ::open("/dev/console", O_RDWR | O_NOCTTY);
  if (fd >= 0 && fd != STDERR_FILENO) {
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  }
}

std::string ReadSmallFile(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || out.size() > (1u << 20)) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Loads the modules runtime.json lists, in its order (dependencies first).
bool LoadModules() {
  nlohmann::json config = nlohmann::json::parse(ReadSmallFile(kConfig), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("modules") || !config["modules"].is_array()) {
    Log(std::string("FATAL: no \"modules\" list in ") + kConfig);
    return false;
  }
  for (const nlohmann::json& m : config["modules"]) {
    if (!m.is_string()) continue;
    const std::string path = "/" + m.get<std::string>();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      Log("FATAL: open " + path + ": " + Errno());
      return false;
    }
    long r = ::syscall(SYS_finit_module, fd, "", 0);
    int err = errno;
    ::close(fd);
    if (r != 0 && err != EEXIST) {
      Log("FATAL: load module " + path + ": " + std::strerror(err));
      return false;
    }
    Log("loaded module " + path);
  }
  return true;
}

// A BOOTP/DHCPDISCOVER message (RFC 2131), 300 bytes like common clients send.
std::vector<uint8_t> DhcpDiscover(const std::array<uint8_t, 6>& mac, uint32_t xid) {
  std::vector<uint8_t> m(300, 0);
  m[0] = 1;  // op: BOOTREQUEST
  m[1] = 1;  // htype: Ethernet
  m[2] = 6;  // hlen
  for (int i = 0; i < 4; ++i) m[4 + static_cast<size_t>(i)] = static_cast<uint8_t>(xid >> (24 - 8 * i));
  m[10] = 0x80;  // flags: broadcast
  std::memcpy(&m[28], mac.data(), mac.size());  // chaddr
  const uint8_t options[] = {0x63, 0x82, 0x53, 0x63,  // magic cookie
                             53, 1, 1,                // DHCP message type: DISCOVER
                             255};                    // end
  std::memcpy(&m[236], options, sizeof options);
  return m;
}

void Run() {
  EnsureConsole();
  Log("starting: TEST-ONLY positive control, sends packets on purpose");
  if (::getpid() != 1) Log("warning: not PID 1");
  if (::mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    Log("mount sysfs: " + Errno());
  }
  if (!LoadModules()) return;

  unsigned index = 0;
  for (int i = 0; i < 100 && index == 0; ++i) {
    index = ::if_nametoindex(kInterface);
    if (index == 0) ::usleep(100'000);
  }
  if (index == 0) {
    Log(std::string("FATAL: no ") + kInterface + " after 10 s");
    return;
  }
  char driver[256] = {};
  ssize_t dn = ::readlink("/sys/class/net/eth0/device/driver", driver, sizeof driver - 1);
  std::string driver_name = dn > 0 ? std::string(driver, static_cast<size_t>(dn)) : "(unknown: " + Errno() + ")";
  if (size_t slash = driver_name.rfind('/'); slash != std::string::npos) driver_name = driver_name.substr(slash + 1);

  int ctl = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (ctl < 0) {
    Log("FATAL: socket(AF_INET): " + Errno());
    return;
  }
  ifreq ifr {};
  std::strncpy(ifr.ifr_name, kInterface, IFNAMSIZ - 1);
  std::array<uint8_t, 6> mac {};
  if (::ioctl(ctl, SIOCGIFHWADDR, &ifr) == 0) std::memcpy(mac.data(), ifr.ifr_hwaddr.sa_data, mac.size());
  char mac_text[32];
  std::snprintf(mac_text, sizeof mac_text, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                mac[5]);
  Log(std::string(kInterface) + ": ifindex " + std::to_string(index) + ", MAC " + mac_text + ", driver " + driver_name);

  if (::ioctl(ctl, SIOCGIFFLAGS, &ifr) != 0) {
    Log("FATAL: SIOCGIFFLAGS: " + Errno());
    ::close(ctl);
    return;
  }
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(ctl, SIOCSIFFLAGS, &ifr) != 0) {
    Log("FATAL: SIOCSIFFLAGS IFF_UP: " + Errno());
    ::close(ctl);
    return;
  }
  ::close(ctl);
  Log(std::string(kInterface) + " is up");

  int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (udp < 0 || ::setsockopt(udp, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) != 0 ||
      ::setsockopt(udp, SOL_SOCKET, SO_BINDTODEVICE, kInterface, static_cast<socklen_t>(std::strlen(kInterface))) != 0) {
    Log("udp socket setup: " + Errno());
  } else {
    sockaddr_in src {};
    src.sin_family = AF_INET;
    src.sin_port = htons(68);
    if (::bind(udp, reinterpret_cast<const sockaddr*>(&src), sizeof src) != 0) Log("bind :68: " + Errno());
    sockaddr_in dst {};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(67);
    dst.sin_addr.s_addr = htonl(INADDR_BROADCAST);
    for (int i = 0; i < kBroadcasts; ++i) {
      std::vector<uint8_t> msg = DhcpDiscover(mac, 0x4e6f6973u + static_cast<uint32_t>(i));
      ssize_t n = ::sendto(udp, msg.data(), msg.size(), 0, reinterpret_cast<const sockaddr*>(&dst), sizeof dst);
      Log("udp broadcast to 255.255.255.255:67 #" + std::to_string(i + 1) + ": " +
          (n >= 0 ? std::to_string(n) + " bytes sent" : "failed: " + Errno()));
      ::usleep(200'000);
    }
  }
  if (udp >= 0) ::close(udp);

  // IPv6 duplicate address detection and the router solicitation follow the link coming up within ~2 s.
  ::sleep(3);
  Log(std::string(kInterface) + ": tx_packets " +
      Trim(ReadSmallFile("/sys/class/net/eth0/statistics/tx_packets")) + ", tx_bytes " +
      Trim(ReadSmallFile("/sys/class/net/eth0/statistics/tx_bytes")));
}

}  // namespace

int main() {
  // PID 1 must never return: every path ends in a power-off.
  try {
    Run();
  } catch (...) {
    Log("FATAL: exception");
  }
  PowerOff();
}
