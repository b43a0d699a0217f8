// The generated bindings import this opt-in marker of kotlinx.coroutines 1.5+; Debian ships
// coroutines 1.0.1, which has everything else they use. Test classpath only.
package kotlinx.coroutines

@RequiresOptIn(level = RequiresOptIn.Level.WARNING)
@Retention(AnnotationRetention.BINARY)
annotation class DelicateCoroutinesApi
