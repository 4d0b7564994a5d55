//! The field names of a provider's `Config`, read from its derived `Deserialize`, so that a
//! test can hold them against the core's type catalogue without listing them twice.

use serde::de::{DeserializeOwned, Error as _, Visitor};

/// A deserializer that only records the field names a struct asks for.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom(
            "a provider's configuration is a struct",
        ))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(Self::Error::custom("only the field names were asked for"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The names of the fields `C` deserializes; empty if `C` is not a struct.
pub(crate) fn of<C: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = C::deserialize(FieldNames(&mut fields));
    fields.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    #[allow(dead_code, reason = "only its field names are read")]
    struct Example {
        command: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
    }

    #[test]
    fn the_names_come_from_the_derived_deserialize() {
        assert_eq!(super::of::<Example>(), ["command", "cwd"]);
        assert!(super::of::<u32>().is_empty());
    }
}
