import NIOCore
import NIOPosix
import PalisadeCLI

/// The `palisade` executable: everything lives in PalisadeCLI.
@main
enum Palisade {
  static func main() async {
    // Swift concurrency runs on NIO's event loops: no thread hop between the network and the handlers.
    _ = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    await PalisadeCommand.main()
  }
}
