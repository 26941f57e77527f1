// qserve: the command-line front end. Each subcommand lives in its own cmd_*.cpp.
#include <cstdio>

int main() {
  std::puts("qserve: under construction");
  return 0;
}
